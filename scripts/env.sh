# Sourced by the scripts in this folder (from the repository root): the Python to use and the environment.
# PYTHON overrides the interpreter; otherwise the project's .venv, else python3.
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="${PWD}/src${PYTHONPATH:+:$PYTHONPATH}"   # works from a plain checkout too

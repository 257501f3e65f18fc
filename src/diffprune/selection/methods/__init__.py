"""The built-in selection criteria: one module per method, and this table of them (the registry reads it).

A new built-in method is a module here with its scoring function (see ``diffprune.selection.method`` for the
contract) and one row below; a method from outside diffprune is added with ``registry.register``.
"""
from diffprune.selection.methods.gaussian import gaussian_scores
from diffprune.selection.methods.gmm import gmm_scores
from diffprune.selection.methods.herding import herding_scores
from diffprune.selection.methods.kcenter import kcenter_scores
from diffprune.selection.methods.kmeans_balanced import kmeans_balanced_scores
from diffprune.selection.methods.knn import knn_scores
from diffprune.selection.methods.moderate import moderate_scores
from diffprune.selection.methods.ppca import ppca_scores
from diffprune.selection.methods.random import random_scores
from diffprune.selection.method import Method

BUILTIN_METHODS: tuple[Method, ...] = (
    Method("gaussian", gaussian_scores,
           "log-likelihood under a per-group full-covariance Gaussian (+1e-5 I), as Instance Selection",
           full_covariance=True),
    Method("gmm", gmm_scores,
           "log-likelihood under an n-component Gaussian mixture per group (sklearn; diagonal by default)"),
    Method("herding", herding_scores,
           "kernel herding: greedy rows whose running mean tracks the group mean (DeepCore)", sequential=True),
    Method("kcenter", kcenter_scores,
           "greedy k-center (farthest point) coverage, one running-min vector (torch, GPU)", sequential=True),
    Method("kmeans-balanced", kmeans_balanced_scores,
           "k-means clusters per group, budget spread proportionally or equally (Briq et al.)"),
    Method("knn", knn_scores, "minus the distance to the 5th nearest neighbour within the group (faiss)"),
    Method("moderate", moderate_scores, "band around the median distance to the group centre (Moderate Coreset)"),
    Method("ppca", ppca_scores, "probabilistic-PCA log-likelihood with the components below 95% of the variance "
                                "(IS's PPCA; components: sklearn keeps one more)"),
    Method("random", random_scores, "uniform random scores (seeded); the baseline"),
)

__all__ = ["BUILTIN_METHODS"]

"""Built-in selection criteria; importing this package registers them."""
from diffprune.selection.methods import (  # noqa: F401
    gaussian,
    gmm,
    herding,
    kcenter,
    kmeans_balanced,
    knn,
    moderate,
    ppca,
    random,
)

"""Learning from rankings (Liu, van de Weijer and Bagdanov, "RankIQA: Learning from rankings for
no-reference image quality assessment", ICCV 2017): images ranked by quality for free, by distorting
a photograph at increasing strength, and a Siamese network trained on those rankings.

* :mod:`.distortions`: the four distortions of the paper at five levels each;
* :mod:`.losses`: the pairwise ranking loss, the standard and the fast Siamese forms, the contrastive loss;
* :mod:`.metrics`: LCC and SROCC, the paper's evaluation measures;
* :mod:`.data`: ranked groups of crops (:class:`RankedSet`) and splits by reference image;
* :mod:`.networks`: the paper's *Shallow* network; :mod:`.train`: training on rankings, scoring;
* :mod:`.quality`: quality scores (a CSV, or SSIM as a stand-in), regression onto them, LCC/SROCC.
"""

from netcompress.rankings.data import RankedSet, as_tensor, split_by_reference
from netcompress.rankings.distortions import KINDS, LEVELS, distort, distortion_series
from netcompress.rankings.losses import (
    contrastive_loss,
    fast_ranking_loss,
    ranked_pairs,
    ranking_loss,
    siamese_ranking_loss,
)
from netcompress.rankings.metrics import lcc, srocc
from netcompress.rankings.networks import Shallow
from netcompress.rankings.quality import evaluate_scores, fit_scores, full_reference_scores, read_scores
from netcompress.rankings.train import RankingHistory, score_image, train_ranker

__all__ = ["RankedSet", "RankingHistory", "Shallow", "as_tensor", "score_image", "split_by_reference", "train_ranker",
           "evaluate_scores", "fit_scores", "full_reference_scores", "read_scores",
           "KINDS", "LEVELS", "contrastive_loss", "distort", "distortion_series", "fast_ranking_loss", "lcc",
           "ranked_pairs", "ranking_loss", "siamese_ranking_loss", "srocc"]

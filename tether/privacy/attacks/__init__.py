"""Attacks that reconstruct a client's training data from what its training releases: the
gradient of a step, read off the weights before and after it (`step_gradients`: a delegated
`fit` result, or a model sent and fetched back in the pointer loop).

- `analytic`: the first Linear layer's gradient row divided by its bias gradient is the input
  itself (batch 1, exact); the label is read off the last layer (iDLG's observation).
- `matching`: DLG and iDLG (Zhu et al. 2019, Zhao et al. 2020), which optimise a dummy input
  (and label) with L-BFGS until its gradient matches the one observed; any twice
  differentiable model (LeNet with sigmoids, as in the paper).

DP-SGD in `fit` (tether.privacy.dp) is the defence; examples/privacy_attack.py and
docs/privacy.md show both.
"""

from tether.privacy.attacks.analytic import infer_label, invert_linear, step_gradients
from tether.privacy.attacks.matching import Reconstruction, dlg, idlg

__all__ = ["Reconstruction", "dlg", "idlg", "infer_label", "invert_linear", "step_gradients"]

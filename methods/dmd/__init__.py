"""DMD: Decoupled Multimodal Distilling (Li, Wang, Cui, CVPR 2023), reimplemented for the harness.

The package, by concern:
- kernels.py  dropout masks, positions, causal masks, attention products and row-blocked attention;
- network.py  the transformer encoders, decoupling into shared/private spaces, fusion and heads (DMDNet);
- bert.py     the fine-tuned text encoder of method.text_encoder=bert (DMD*): BERT on the text tokens;
- graph.py    the graph distillation units: edges, priors, learned edge weights;
- losses.py   every loss term of a training batch (DMDLoss);
- plot.py     the figure of the learned edges;
- method.py   the registered `dmd` method: presets, training in the shared loop, records, prediction.

What the harness keeps from the official code (mdswyz/DMD), what it changes and why, and the official
bugs it fixes or reproduces on purpose: docs/fidelity.md#dmd.
"""

from methods.dmd.graph import (PAPER_PRIOR_EDGES, ROLE_NAMES, GraphDistillationUnit, edge_priors, graph_edges,
                               node_roles)
from methods.dmd.kernels import (ATTENTION_ROW_BLOCK, attention_scores, causal_mask, dropout, keep_mask,
                                 sinusoidal_table, weighted_values)
from methods.dmd.losses import DMDLoss, margin_loss, orthogonality_loss, task_loss_dmd
from methods.dmd.method import (DMD, PRESETS, build_dmd, count_parameters, make_optimizer, pool_step_targets,
                                resolve_hparams)
from methods.dmd.network import DMDNet, DMDOutput, MulTEncoderGroup, ResidualHead, StackedEncoderLayer
from methods.dmd.plot import plot_edges

__all__ = ["ATTENTION_ROW_BLOCK", "DMD", "DMDLoss", "DMDNet", "DMDOutput", "GraphDistillationUnit", "MulTEncoderGroup",
           "PAPER_PRIOR_EDGES", "PRESETS", "ROLE_NAMES", "ResidualHead", "StackedEncoderLayer", "attention_scores",
           "build_dmd", "causal_mask", "count_parameters", "dropout", "edge_priors", "graph_edges", "keep_mask",
           "make_optimizer", "margin_loss", "node_roles", "orthogonality_loss", "plot_edges", "pool_step_targets",
           "resolve_hparams", "sinusoidal_table", "task_loss_dmd", "weighted_values"]

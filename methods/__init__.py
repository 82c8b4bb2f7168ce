"""Methods: one file per method (student, teacher, kd, ...) plus the shared network blocks in blocks.py.

CATALOGUE lists every registered method: the module that registers it, its description and bound, the same as
the class's (checked when the class registers). `harness list` reads it without importing torch, and a run
imports only the module of the method it uses (harness/registry.py). A new method needs its line here.
"""

from harness.registry import Listed

CATALOGUE: dict[str, Listed] = {
    "dmd": Listed("methods.dmd.method", "DMD (CVPR 2023): decoupled homo/hetero spaces + graph distillation units; "
                  "privileged protocol: learned edges distil privileged nodes into the student's (text = precomputed "
                  "features, or BERT fine-tuned on the tokens with method.text_encoder=bert)"),
    "kd": Listed("methods.kd", "point-to-point privileged KD: Hinton/MSE response matching + FitNets feature matching"),
    "mtpkdot": Listed("methods.mtpkdot", "MT-PKDOT: self-distilled modality/joint teachers, per-batch best teacher "
                      "distilled by entropic OT"),
    "pkdot": Listed("methods.pkdot", "PKDOT: T-Net-hallucinated privileged slot + entropic-OT matching of "
                    "teacher/student batch structure"),
    "student": Listed("methods.student", "student modalities only, no teacher: the lower bound", "lower_bound"),
    "teacher": Listed("methods.teacher", "multimodal teacher scored WITH privileged modalities at test: the upper "
                      "bound, not a student", "upper_bound"),
}

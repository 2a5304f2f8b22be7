"""rCM step distillation and SLA fine-tuning: TrigFlow wrapper, JVP attention, rCM losses, the trainer
(`distill(pipe, DistillConfig, data, out)`, run by `accelerate`) and the export (`export_student`: a diffusers model
directory with its turbo recipe). Command line: `turbo distill --config cfg.yaml` / `python -m turbo.distill`."""

from .config import DistillConfig, tiny_toyworld
from .export import export_student, recipe_of
from .jvp_attention import (
    JVPAttentionFunction,
    JVPWanAttnProcessor,
    attention_backward_reference,
    attention_reference,
    attention_with_jvp,
    install_jvp_attention,
    jvp_attention_reference,
    remove_jvp_attention,
    using_jvp_attention,
)
from .losses import (
    cfg_combine,
    dmd_generator_loss,
    dmd_simulation_steps,
    fake_score_loss,
    normalize_tangent,
    sample_lognormal_theta,
    sample_uniform_shift_theta,
    scm_loss,
    scm_tangents,
    scm_target,
    tangent_warmup_ratio,
)
from .trainer import DistillResult, check_teacher, distill
from .trigflow import (
    F_to_x0,
    TrigFlowModel,
    TrigFlowPrediction,
    backward_simulation,
    rf_to_trig,
    rf_to_trig_state,
    rf_velocity_to_F,
    rf_velocity_to_x0,
    shift_rf_time,
    sigma_to_trig,
    trig_noise,
    trig_to_rf,
    trig_to_rf_state,
    trig_to_sigma,
    trigflow_coefficients,
    x0_to_F,
)

__all__ = [
    "DistillConfig", "DistillResult", "check_teacher", "distill", "export_student", "recipe_of", "tiny_toyworld",
    "JVPAttentionFunction", "JVPWanAttnProcessor", "attention_backward_reference", "attention_reference",
    "attention_with_jvp", "install_jvp_attention", "jvp_attention_reference", "remove_jvp_attention",
    "using_jvp_attention", "cfg_combine", "dmd_generator_loss", "dmd_simulation_steps", "fake_score_loss",
    "normalize_tangent", "sample_lognormal_theta", "sample_uniform_shift_theta", "scm_loss", "scm_tangents",
    "scm_target", "tangent_warmup_ratio", "F_to_x0", "TrigFlowModel", "TrigFlowPrediction", "backward_simulation",
    "rf_to_trig", "rf_to_trig_state", "rf_velocity_to_F", "rf_velocity_to_x0", "shift_rf_time", "sigma_to_trig",
    "trig_noise", "trig_to_rf", "trig_to_rf_state", "trig_to_sigma", "trigflow_coefficients", "x0_to_F",
]

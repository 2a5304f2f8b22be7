"""rCM step distillation and SLA fine-tuning (building blocks so far: TrigFlow wrapper, JVP attention, rCM losses).

Not built yet: `SamplerConfig(mode="rcm")` raises `NotImplementedMethodError` at `accelerate()` time."""

from .jvp_attention import (
    JVPAttentionFunction, JVPWanAttnProcessor, attention_backward_reference, attention_reference,
    attention_with_jvp, install_jvp_attention, jvp_attention_reference, remove_jvp_attention, using_jvp_attention,
)
from .losses import (
    cfg_combine, dmd_generator_loss, dmd_simulation_steps, fake_score_loss, normalize_tangent,
    sample_lognormal_theta, sample_uniform_shift_theta, scm_loss, scm_tangents, scm_target, tangent_warmup_ratio,
)
from .trigflow import (
    F_to_x0, TrigFlowModel, TrigFlowPrediction, backward_simulation, rf_to_trig, rf_to_trig_state,
    rf_velocity_to_F, rf_velocity_to_x0, shift_rf_time, sigma_to_trig, trig_noise, trig_to_rf, trig_to_rf_state,
    trig_to_sigma, trigflow_coefficients, x0_to_F,
)

__all__ = [
    "JVPAttentionFunction", "JVPWanAttnProcessor", "attention_backward_reference", "attention_reference",
    "attention_with_jvp", "install_jvp_attention", "jvp_attention_reference", "remove_jvp_attention",
    "using_jvp_attention", "cfg_combine", "dmd_generator_loss", "dmd_simulation_steps", "fake_score_loss",
    "normalize_tangent", "sample_lognormal_theta", "sample_uniform_shift_theta", "scm_loss", "scm_tangents",
    "scm_target", "tangent_warmup_ratio", "F_to_x0", "TrigFlowModel", "TrigFlowPrediction", "backward_simulation",
    "rf_to_trig", "rf_to_trig_state", "rf_velocity_to_F", "rf_velocity_to_x0", "shift_rf_time", "sigma_to_trig",
    "trig_noise", "trig_to_rf", "trig_to_rf_state", "trig_to_sigma", "trigflow_coefficients", "x0_to_F",
]

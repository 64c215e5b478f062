//! Rotary position embedding as DeepSeek-V2 uses it: interleaved pairs (x[2i], x[2i+1]) rotated by
//! frequency i, with YaRN's frequency blend and cos/sin scale.
//!
//! Frequencies and angles are computed in f32 the way transformers computes them, so late
//! positions agree with the reference to float rounding.

use candle_core::{DType, Device, Tensor};

use crate::config::RopeConfig;
use crate::error::Result;

pub struct Rope {
    inv_freq: Vec<f32>,
    /// Multiplies cos and sin (YaRN's attention factor; 1 without scaling).
    cos_sin_scale: f32,
}

impl Rope {
    pub fn new(config: &RopeConfig, rope_dim: usize) -> Self {
        let base = config.theta as f32;
        let half = rope_dim / 2;
        let pos_freqs: Vec<f32> = (0..half)
            .map(|i| base.powf((2 * i) as f32 / rope_dim as f32))
            .collect();
        let Some(yarn) = &config.yarn else {
            return Self {
                inv_freq: pos_freqs.iter().map(|p| 1.0 / p).collect(),
                cos_sin_scale: 1.0,
            };
        };
        // The dimension whose wavelength completes `rotations` turns in the original context.
        let correction_dim = |rotations: f64| {
            rope_dim as f64
                * (yarn.original_max_position_embeddings / (rotations * 2.0 * std::f64::consts::PI))
                    .ln()
                / (2.0 * config.theta.ln())
        };
        let (mut low, mut high) = (
            correction_dim(yarn.beta_fast),
            correction_dim(yarn.beta_slow),
        );
        if yarn.truncate {
            low = low.floor();
            high = high.ceil();
        }
        let low = low.max(0.0) as f32;
        let high = high.min(rope_dim as f64 - 1.0) as f32;
        let high = if low == high { high + 0.001 } else { high };
        let factor = yarn.factor as f32;
        let inv_freq = pos_freqs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                let extrapolation_weight = 1.0 - ramp;
                let interpolated = 1.0 / (factor * p);
                let extrapolated = 1.0 / p;
                interpolated * (1.0 - extrapolation_weight) + extrapolated * extrapolation_weight
            })
            .collect();
        Self {
            inv_freq,
            cos_sin_scale: yarn.cos_sin_scale() as f32,
        }
    }

    /// cos and sin tables, each [len, rope_dim / 2], for positions start..start+len.
    pub fn tables(
        &self,
        start: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for position in start..start + len {
            for &f in &self.inv_freq {
                let (s, c) = (position as f32 * f).sin_cos();
                cos.push(c * self.cos_sin_scale);
                sin.push(s * self.cos_sin_scale);
            }
        }
        let cos = Tensor::from_vec(cos, (len, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (len, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// Rotates `x` of shape [heads, len, rope_dim] (contiguous) with tables from [`Rope::tables`].
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x4 = x.unsqueeze(0)?.contiguous()?;
        Ok(candle_nn::rotary_emb::rope_i(&x4, cos, sin)?.squeeze(0)?)
    }
}

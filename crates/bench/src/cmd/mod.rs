//! The subcommands, one module each, and what they share.

#[cfg(feature = "cuda")]
pub mod cublas;
pub mod estimate;
pub mod kernels;
pub mod measure;
pub mod plan;
pub mod soak;
pub mod step;

use ember_bench::estimate::{Breakdown, Dtype, Method, Settings};
use ember_bench::llama::LlamaShape;

use crate::Common;

/// The GaLore paper's rank of a preset; hidden/4 for other models.
pub fn default_rank(shape: &LlamaShape) -> usize {
    match shape.name.as_str() {
        "tiny" => 64,
        "60m" => 128,
        "130m" | "350m" => 256,
        "1b" => 512,
        "7b" => 1024,
        _ => (shape.hidden_size / 4).max(1),
    }
}

/// `all`, one method name or a comma-separated list.
pub fn methods(names: &str) -> Result<Vec<Method>, String> {
    if names == "all" {
        return Ok(Method::ALL.to_vec());
    }
    names
        .split(',')
        .map(|name| {
            Method::parse(name.trim()).map_err(|_| {
                format!(
                    "unknown optimizer `{name}` (adamw, galore, fira, frugal, dct, qgalore, all, \
                     or a comma-separated list)"
                )
            })
        })
        .collect()
}

/// The settings of every method named by `c`.
pub fn settings(c: &Common, shape: &LlamaShape) -> Result<Vec<Settings>, String> {
    if !(c.density > 0.0 && c.density <= 1.0) {
        return Err(format!("--density {} must be in (0, 1]", c.density));
    }
    if c.weights_dtype == Dtype::Int8 {
        return Err(
            "--weights-dtype is f32 or bf16 (INT8 weights are Q-GaLore's QLinear layers)".into(),
        );
    }
    Ok(methods(&c.optimizer)?
        .into_iter()
        .map(|method| Settings {
            method,
            rank: c.rank.unwrap_or_else(|| default_rank(shape)),
            density: c.density,
            weights: c.weights_dtype,
            state: c.state_dtype,
        })
        .collect())
}

/// `512`, `ρ=0.25` or `-`.
pub fn rank_cell(b: &Breakdown) -> String {
    match (b.rank, b.density) {
        (Some(r), _) => r.to_string(),
        (_, Some(d)) => format!("ρ={d}"),
        _ => "-".into(),
    }
}

/// `a,b,c` → values.
pub fn parse_list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>, String> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<T>()
                .map_err(|_| format!("cannot read {what} `{x}`"))
        })
        .collect()
}

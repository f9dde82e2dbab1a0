//! `step`: optimizer-step and refresh time on single matrices.

use super::{methods, parse_list};
use crate::Device;
use ember_bench::estimate::Method;

pub fn run(
    optimizer: &str,
    shapes: &str,
    ranks: &str,
    device: Device,
    (iters, warmup, refreshes): (usize, usize, usize),
    (weights, state): (ember_bench::estimate::Dtype, ember_bench::estimate::Dtype),
) -> Result<(), String> {
    if weights == ember_bench::estimate::Dtype::Int8 {
        return Err("--weights-dtype: f32 or bf16 (int8 is a state dtype)".into());
    }
    use ember_bench::steptime::time_step;
    let shapes = parse_shapes(shapes)?;
    let ranks: Vec<usize> = parse_list(ranks, "rank")?;
    if iters == 0 {
        return Err("--iters must be positive".into());
    }
    for method in methods(optimizer)? {
        for &(m, n) in &shapes {
            for &r in &ranks {
                if r == 0 || r > m.min(n) {
                    return Err(format!("rank {r} does not fit a {m}x{n} matrix"));
                }
                let cfg = (warmup, iters, refreshes);
                #[allow(unused_mut)]
                let mut t = on_device!(device, B => {
                    time_step::<B>(method, (m, n), r, cfg, (weights, state), &Default::default())
                });
                #[cfg(feature = "cuda")]
                if device.is_cuda() {
                    t.cublas = Some(ember_kernels::cublas::status());
                }
                println!("{}", serde_json::to_string(&t).unwrap());
                if method == Method::Adamw {
                    break; // rank does not matter
                }
            }
        }
    }
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        print_tuning();
    }
    Ok(())
}

/// What the cuBLAS algorithm timing measured for each GEMM signature of the run
/// (`ember_kernels::cublas::tuning_report`), one JSON line each on stderr.
#[cfg(feature = "cuda")]
fn print_tuning() {
    for r in ember_kernels::cublas::tuning_report() {
        let candidates: Vec<String> = r
            .candidates_ms
            .iter()
            .map(|t| t.map_or("null".into(), |t| format!("{t:.4}")))
            .collect();
        eprintln!(
            "{{\"cublas_tuning\": [{}, {}, {}], \"dtype\": \"{}\", \"scratch\": {}, \"default_ms\": {:.4}, \"candidates_ms\": [{}], \"chosen\": {}, \"candidates_config\": [{}]}}",
            r.mkn[0],
            r.mkn[1],
            r.mkn[2],
            r.dtype,
            r.scratch,
            r.default_ms,
            candidates.join(", "),
            r.chosen.map_or("null".into(), |i| i.to_string()),
            r.candidates_config
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// `4096x11008,2048x2048` → `[(4096, 11008), (2048, 2048)]`.
pub fn parse_shapes(shapes: &str) -> Result<Vec<(usize, usize)>, String> {
    shapes
        .split(',')
        .map(|s| {
            let (a, b) = s
                .trim()
                .split_once('x')
                .ok_or(format!("shape `{s}` is not MxN"))?;
            Ok((
                a.parse().map_err(|_| format!("shape `{s}`"))?,
                b.parse().map_err(|_| format!("shape `{s}`"))?,
            ))
        })
        .collect()
}

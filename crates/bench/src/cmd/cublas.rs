//! `cublas` (CUDA builds): GaLore's projection products as the optimizer runs them,
//! [`EmberBackend::projection_matmul`] (cuBLAS on burn's buffers, `ember_kernels::cublas`), beside
//! burn's `matmul` of the same operands — issue 18 item 1.
//!
//! The down projection is `Pᵀ·G` with `Pᵀ` a transposed view of `P` (read in place), the up
//! projection `P·N`. Two timings per product, medians over `iters` rounds:
//! - `*_ms`: one call bracketed by two host synchronizations (latency of one product alone);
//! - `*_queued_ms`: `iters` calls queued back to back, one synchronization at the end, divided by
//!   `iters` — what a step's chain of products costs when nothing waits on the host (the
//!   optimizer's case; with `EMBER_CUBLAS=flags` the cuBLAS calls are ordered on the device).
//!
//! f32 operands run on TF32 tensor cores on both sides, bf16 operands with f32 accumulation. Each
//! product is compared with burn's (relative Frobenius error). Output: one JSON line per (shape,
//! rank, precision, projection), with the ordering mode (`EMBER_CUBLAS`).

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use ember_kernels::EmberBackend;
use serde::Serialize;

use crate::BareCuda as B;

#[derive(Serialize)]
struct Row {
    m: usize,
    n: usize,
    rank: usize,
    precision: &'static str,
    projection: &'static str,
    ordering: String,
    /// `ember_kernels::cublas::status()` after the row's runs
    cublas: String,
    burn_ms: f64,
    ember_ms: f64,
    burn_queued_ms: f64,
    ember_queued_ms: f64,
    rel_err_vs_burn: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(shapes: &[(usize, usize)], ranks: &[usize], iters: usize) -> Result<(), String> {
    let device = cubecl::cuda::CudaDevice::new(0);
    let sync = || B::sync(&device).map_err(|e| format!("sync: {e:?}"));
    let ordering = format!("{:?}", ember_kernels::cublas::mode());
    for &(m, n) in shapes {
        for &r in ranks {
            for (precision, dtype) in [("tf32", DType::F32), ("bf16", DType::BF16)] {
                let rnd = |s: [usize; 2]| {
                    Tensor::<B, 2>::random(s, Distribution::Normal(0.0, 1.0), &device).cast(dtype)
                };
                let (g, p, low) = (rnd([m, n]), rnd([m, r]), rnd([r, n]));
                // down: R[r,n] = Pᵀ·G; up: U[m,n] = P·N
                for (projection, a, b) in
                    [("down", p.clone().transpose(), &g), ("up", p.clone(), &low)]
                {
                    let burn_op = || a.clone().matmul(b.clone());
                    let ember_op = || B::projection_matmul(a.clone(), b.clone());
                    let time = |op: &dyn Fn() -> Tensor<B, 2>| -> Result<(f64, f64), String> {
                        let (mut one, mut queued) = (vec![], vec![]);
                        for i in 0..iters + 3 {
                            sync()?;
                            let t = Instant::now();
                            drop(op());
                            sync()?;
                            let e = t.elapsed().as_secs_f64() * 1e3;
                            let t = Instant::now();
                            for _ in 0..iters {
                                drop(op());
                            }
                            sync()?;
                            let q = t.elapsed().as_secs_f64() * 1e3 / iters as f64;
                            if i >= 3 {
                                one.push(e);
                                queued.push(q);
                            }
                        }
                        Ok((median(one), median(queued)))
                    };
                    let (burn_ms, burn_queued_ms) = time(&burn_op)?;
                    let (ember_ms, ember_queued_ms) = time(&ember_op)?;
                    let (x, y) = (ember_op().cast(DType::F32), burn_op().cast(DType::F32));
                    let num: f32 = (x - y.clone()).powi_scalar(2).sum().sqrt().into_scalar();
                    let den: f32 = y.powi_scalar(2).sum().sqrt().into_scalar();
                    let row = Row {
                        m,
                        n,
                        rank: r,
                        precision,
                        projection,
                        ordering: ordering.clone(),
                        cublas: ember_kernels::cublas::status(),
                        burn_ms,
                        ember_ms,
                        burn_queued_ms,
                        ember_queued_ms,
                        rel_err_vs_burn: (num / den) as f64,
                    };
                    println!("{}", serde_json::to_string(&row).unwrap());
                }
            }
        }
    }
    Ok(())
}

//! `cublas` (CUDA builds): GaLore's projection matmuls through cuBLAS on burn's own CUDA buffers,
//! beside burn's matmul — issue 18 item 1's measurement of the cuBLAS route.
//!
//! The buffers are burn's: `ComputeClient::get_resource` gives each tensor's device pointer, the
//! output is a tensor burn allocated. CubeCL does not expose its CUDA stream, so each cuBLAS call
//! is bracketed by synchronizations — burn's queue drained before (`client.sync()`), the context
//! synchronized after — and the figures include that cost. `cublasGemmEx` runs on the legacy
//! stream of the primary context (the one CubeCL retains), f32 operands with TF32 tensor cores
//! (`CUBLAS_COMPUTE_32F_FAST_TF32`) or bf16 operands with f32 accumulation. Each result is
//! compared with burn's matmul of the same operands (relative Frobenius error).
//!
//! Output: one JSON line per (shape, rank, precision, projection).

use std::ffi::c_void;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use cudarc::cublas::{result as blas, sys as bsys};
use cudarc::driver::result as drv;
use serde::Serialize;

use crate::BareCuda as B;

#[derive(Serialize)]
struct Row {
    m: usize,
    n: usize,
    rank: usize,
    precision: &'static str,
    projection: &'static str,
    burn_ms: f64,
    cublas_ms: f64,
    rel_err_vs_burn: f64,
}

/// The device pointer of a burn CUDA tensor (contiguous, offset included).
fn ptr(t: &Tensor<B, 2>) -> u64 {
    let c = t.clone().into_primitive().tensor();
    let res = c
        .client
        .get_resource(c.handle.clone())
        .expect("a CUDA resource");
    res.resource().ptr
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Row-major `C[M,N] = op(A)·B` by cuBLAS (column-major: `Cᵀ = Bᵀ·op(A)ᵀ`); `a_t`: `A` is
/// stored `[K,M]` and read transposed.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    h: bsys::cublasHandle_t,
    a: u64,
    a_t: bool,
    b: u64,
    c: u64,
    (m, n, k): (usize, usize, usize),
    bf16: bool,
) {
    let (dt, compute) = if bf16 {
        (
            bsys::cudaDataType::CUDA_R_16BF,
            bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        )
    } else {
        (
            bsys::cudaDataType::CUDA_R_32F,
            bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        )
    };
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (op_a, lda) = if a_t {
        (bsys::cublasOperation_t::CUBLAS_OP_T, m)
    } else {
        (bsys::cublasOperation_t::CUBLAS_OP_N, k)
    };
    unsafe {
        blas::gemm_ex(
            h,
            bsys::cublasOperation_t::CUBLAS_OP_N,
            op_a,
            n as i32,
            m as i32,
            k as i32,
            &alpha as *const f32 as *const c_void,
            b as *const c_void,
            dt,
            n as i32,
            a as *const c_void,
            dt,
            lda as i32,
            &beta as *const f32 as *const c_void,
            c as *mut c_void,
            dt,
            n as i32,
            compute,
            bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
        )
        .expect("cublasGemmEx");
    }
}

pub fn run(shapes: &[(usize, usize)], ranks: &[usize], iters: usize) -> Result<(), String> {
    let device = cubecl::cuda::CudaDevice::new(0);
    // burn first (CubeCL retains the primary context), then the same context on this thread
    let _ = Tensor::<B, 1>::zeros([1], &device).into_data();
    let h = unsafe {
        drv::init().map_err(|e| format!("cuInit: {e:?}"))?;
        let dev = drv::device::get(0).map_err(|e| format!("cuDeviceGet: {e:?}"))?;
        let ctx = drv::primary_ctx::retain(dev).map_err(|e| format!("retain: {e:?}"))?;
        drv::ctx::set_current(ctx).map_err(|e| format!("set_current: {e:?}"))?;
        blas::create_handle().map_err(|e| format!("cublasCreate: {e:?}"))?
    };
    let sync = || B::sync(&device).ok();
    for &(m, n) in shapes {
        for &r in ranks {
            for (precision, dtype) in [("tf32", DType::F32), ("bf16", DType::BF16)] {
                let rnd = |s: [usize; 2]| {
                    Tensor::<B, 2>::random(s, Distribution::Normal(0.0, 1.0), &device).cast(dtype)
                };
                let (g, p, low) = (rnd([m, n]), rnd([m, r]), rnd([r, n]));
                // down: R[r,n] = Pᵀ·G; up: U[m,n] = P·N
                for (projection, a, a_t, b, (mm, nn, kk)) in [
                    ("down", &p, true, &g, (r, n, m)),
                    ("up", &p, false, &low, (m, n, r)),
                ] {
                    let burn_op = || {
                        if a_t {
                            a.clone().transpose().matmul(b.clone())
                        } else {
                            a.clone().matmul(b.clone())
                        }
                    };
                    let reference = burn_op();
                    let out = Tensor::<B, 2>::zeros([mm, nn], &device).cast(dtype);
                    let mut burn_t = vec![];
                    let mut blas_t = vec![];
                    for i in 0..iters + 3 {
                        sync();
                        let t = Instant::now();
                        let x = burn_op();
                        sync();
                        let e = t.elapsed().as_secs_f64() * 1e3;
                        drop(x);
                        let t = Instant::now();
                        sync();
                        let (pa, pb, pc) = (ptr(a), ptr(b), ptr(&out));
                        unsafe {
                            gemm(h, pa, a_t, pb, pc, (mm, nn, kk), dtype == DType::BF16);
                        }
                        drv::ctx::synchronize().map_err(|e| format!("sync: {e:?}"))?;
                        let f = t.elapsed().as_secs_f64() * 1e3;
                        if i >= 3 {
                            burn_t.push(e);
                            blas_t.push(f);
                        }
                    }
                    let (x, y) = (out.clone().cast(DType::F32), reference.cast(DType::F32));
                    let num: f32 = (x - y.clone()).powi_scalar(2).sum().sqrt().into_scalar();
                    let den: f32 = y.powi_scalar(2).sum().sqrt().into_scalar();
                    let row = Row {
                        m,
                        n,
                        rank: r,
                        precision,
                        projection,
                        burn_ms: median(burn_t),
                        cublas_ms: median(blas_t),
                        rel_err_vs_burn: (num / den) as f64,
                    };
                    println!("{}", serde_json::to_string(&row).unwrap());
                }
            }
        }
    }
    Ok(())
}

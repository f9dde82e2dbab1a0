//! Projector refresh on the CPU: exact top-r SVD (faer, on the host) vs DCT column selection
//! (dense `G·Q` on burn's flex backend, and FFT scoring on the host), and the DCT scoring
//! alone for square sizes 512…4096.
//!
//! `cargo bench --bench refresh` (results and analysis: docs/perf-notes.md)

use burn::backend::Flex;
use burn::prelude::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ember::core::dct::{fft_scores, top_r};
use ember::core::{ProjType, ProjectorKind, SharedBases};

type B = Flex;

fn gradient(m: usize, n: usize) -> Tensor<B, 2> {
    let mut s = 0x2545F4914F6CDD1Du64;
    let v: Vec<f32> = (0..m * n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [m, n]), &Default::default())
}

fn refresh(c: &mut Criterion) {
    let mut group = c.benchmark_group("refresh_r256");
    group.sample_size(10);
    let rank = 256;
    for (m, n) in [(1024usize, 1024usize), (2048, 5461)] {
        let g = gradient(m, n);
        let id = format!("{m}x{n}");
        let bases = SharedBases::<B>::new();
        group.bench_with_input(BenchmarkId::new("exact_svd_faer", &id), &g, |b, g| {
            b.iter(|| {
                ProjectorKind::ExactSvd(ProjType::Std)
                    .fit(g, rank, &bases, 0, 0)
                    .unwrap()
            })
        });
        // the basis is built once and shared; warm it before timing
        let _ = ProjectorKind::Dct(ProjType::Std).fit(&g, rank, &bases, 0, 0);
        group.bench_with_input(BenchmarkId::new("dct_matmul_flex", &id), &g, |b, g| {
            b.iter(|| {
                let p = ProjectorKind::Dct(ProjType::Std)
                    .fit(g, rank, &bases, 0, 0)
                    .unwrap();
                // force the lazy computation to finish
                if let ember::core::ProjectorState::Selected(s) = p {
                    s.indices.into_data()
                } else {
                    unreachable!()
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("dct_fft_host", &id), &g, |b, g| {
            b.iter(|| {
                let data = g.clone().into_data();
                let v = data.as_slice::<f32>().unwrap();
                top_r(&fft_scores(v, m, n, m < n), rank)
            })
        });
    }
    group.finish();
}

fn dct_scoring(c: &mut Criterion) {
    let mut group = c.benchmark_group("dct_scoring_square");
    group.sample_size(10);
    for s in [512usize, 1024, 2048, 4096] {
        let g = gradient(s, s);
        let bases = SharedBases::<B>::new();
        let q = bases.get(s, &Default::default());
        group.bench_with_input(BenchmarkId::new("matmul_flex", s), &g, |b, g| {
            b.iter(|| g.clone().matmul(q.clone()).abs().sum_dim(0).into_data())
        });
        group.bench_with_input(BenchmarkId::new("fft_host", s), &g, |b, g| {
            b.iter(|| {
                let data = g.clone().into_data();
                fft_scores(data.as_slice::<f32>().unwrap(), s, s, false)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, refresh, dct_scoring);
criterion_main!(benches);

//! Fitting a projector to a gradient: the exact SVD on the host, subspace iteration on the device
//! ([`crate::range`]), the DCT columns that best align with `G`, random subspaces or coordinates.

use burn::prelude::*;
use ember_kernels::EmberBackend;

use super::state::quantized_state;
use super::{FitContext, ProjType, ProjectorKind, ProjectorState, Selection, Side, TwoSided};
use crate::dct::SharedBases;
use crate::error::EmberError;
use crate::rng::SplitMix64;
use crate::svd::truncated_svd;

/// Whether a one-sided projector acts on the left of an `m × n` gradient; `Full` is an error
/// naming `what`.
fn left_side(proj_type: ProjType, m: usize, n: usize, what: &str) -> Result<bool, EmberError> {
    match proj_type.side(m, n) {
        Side::Left => Ok(true),
        Side::Right => Ok(false),
        Side::Both => Err(EmberError::InvalidConfig(format!(
            "{what} has no two-sided (`full`) mode"
        ))),
    }
}

/// `(left side?, size of the projected dimension)` of a one-sided projector (`Full` is treated as
/// left; callers that cannot do two-sided reject it in `EngineConfig::validate`).
fn one_side(proj_type: ProjType, [m, n]: [usize; 2]) -> (bool, usize) {
    let left = matches!(proj_type.side(m, n), Side::Left | Side::Both);
    (left, if left { m } else { n })
}

impl ProjectorKind {
    /// Computes a fresh projector of rank `rank` from the gradient `g` (m×n). Random kinds draw
    /// from `(seed, salt, refreshes)`: `salt` identifies the parameter, `refreshes` counts its
    /// earlier refreshes, so a resumed run draws the same subspaces.
    pub fn fit<B: EmberBackend>(
        &self,
        g: &Tensor<B, 2>,
        rank: usize,
        bases: &SharedBases<B>,
        salt: u64,
        refreshes: usize,
    ) -> Result<ProjectorState<B>, EmberError> {
        self.fit_with_first(g, rank, bases, salt, refreshes)
            .map(|f| f.0)
    }

    /// [`fit`](Self::fit), also returning the float projector's first basis vector (first row
    /// of a right projector, first column of a left one) for SVD projectors: Q-GaLore's lazy
    /// refresh rule compares it across refreshes.
    pub fn fit_with_first<B: EmberBackend>(
        &self,
        g: &Tensor<B, 2>,
        rank: usize,
        bases: &SharedBases<B>,
        salt: u64,
        refreshes: usize,
    ) -> Result<(ProjectorState<B>, Option<Vec<f32>>), EmberError> {
        self.fit_warm(g, rank, bases, salt, refreshes, None)
    }

    /// [`fit_with_first`](Self::fit_with_first), with the previous projector for projectors that
    /// warm-start from it (`DeviceRange`).
    pub fn fit_warm<B: EmberBackend>(
        &self,
        g: &Tensor<B, 2>,
        rank: usize,
        bases: &SharedBases<B>,
        salt: u64,
        refreshes: usize,
        prev: Option<&ProjectorState<B>>,
    ) -> Result<(ProjectorState<B>, Option<Vec<f32>>), EmberError> {
        if let ProjectorKind::DeviceRange {
            proj_type,
            power_iters,
        } = self
        {
            let [m, n] = g.dims();
            let left = left_side(*proj_type, m, n, "the device projector")?;
            let dim = if left { m } else { n };
            let warm = match prev {
                Some(ProjectorState::Left(p)) if left && p.dims() == [m, rank] => {
                    Some(p.clone().cast(burn::tensor::DType::F32))
                }
                Some(ProjectorState::Right(p)) if !left && p.dims() == [rank, n] => {
                    Some(p.clone().cast(burn::tensor::DType::F32).transpose())
                }
                _ => None,
            };
            let device = g.device();
            let random = |stream: u64| {
                let mut rng = match stream {
                    0 => SplitMix64::new(0x5eed, &[salt, refreshes as u64]),
                    k => SplitMix64::new(0x5eed, &[salt, refreshes as u64, k]),
                };
                Tensor::from_data(TensorData::new(rng.signs(dim * rank), [dim, rank]), &device)
            };
            let p = crate::range::fit(g, warm, random, left, *power_iters);
            return Ok((
                if left {
                    ProjectorState::Left(p)
                } else {
                    ProjectorState::Right(p)
                },
                None,
            ));
        }
        if let ProjectorKind::Custom(custom) = self {
            let [m, n] = g.dims();
            let what = format!("the custom projector `{}`", custom.name());
            let left = left_side(custom.proj_type, m, n, &what)?;
            let want = if left { [m, rank] } else { [rank, n] };
            let previous = match prev {
                Some(ProjectorState::Left(p) | ProjectorState::Right(p)) if p.dims() == want => {
                    Some(p.clone().cast(burn::tensor::DType::F32))
                }
                _ => None,
            };
            let ctx = FitContext {
                rank,
                side: if left { Side::Left } else { Side::Right },
                previous,
                salt,
                refreshes,
            };
            let p = custom
                .part::<B>()?
                .fit(g, ctx)
                .map_err(|e| EmberError::InvalidConfig(format!("{what}: {e}")))?;
            if p.dims() != want {
                return Err(EmberError::InvalidConfig(format!(
                    "{what} returned a basis of shape {:?} for a {m}×{n} gradient at rank {rank} \
                     (expected {want:?})",
                    p.dims()
                )));
            }
            // on the gradient's device, in f32, whatever the fit returned
            let p = p.to_device(&g.device()).cast(burn::tensor::DType::F32);
            let state = if left {
                ProjectorState::Left(p)
            } else {
                ProjectorState::Right(p)
            };
            return Ok((state, None));
        }
        if let ProjectorKind::AutoSvd(t) = self {
            let kind = if *t != ProjType::Full && !crate::dct::is_host_backend::<B>(&g.device()) {
                ProjectorKind::DeviceRange {
                    proj_type: *t,
                    power_iters: 1,
                }
            } else {
                ProjectorKind::ExactSvd(*t)
            };
            return kind.fit_warm(g, rank, bases, salt, refreshes, prev);
        }
        if let ProjectorKind::QuantizedSvd {
            bits,
            group_size,
            device: true,
            power_iters,
        } = self
        {
            let [m, n] = g.dims();
            let left = ProjType::Std.side(m, n) == Side::Left;
            let dim = if left { m } else { n };
            let warm = match prev {
                Some(ProjectorState::Quantized(q)) if q.left == left => {
                    let p = q.dequantize();
                    let p = if left { p } else { p.transpose() };
                    (p.dims() == [dim, rank]).then_some(p)
                }
                _ => None,
            };
            let device = g.device();
            let random = |stream: u64| {
                let mut rng = SplitMix64::new(0x5eed, &[salt, refreshes as u64, stream]);
                Tensor::from_data(TensorData::new(rng.signs(dim * rank), [dim, rank]), &device)
            };
            let g32 = g.clone().cast(burn::tensor::DType::F32);
            let p = crate::range::fit(&g32, warm, random, left, *power_iters);
            let first = crate::range::top_vector(&g32, &p, left, 30);
            let (rows, cols) = if left { (m, rank) } else { (rank, n) };
            let data = p.into_data().convert::<f32>();
            let values = data
                .as_slice::<f32>()
                .map_err(|e| EmberError::Internal(format!("projector to host: {e:?}")))?;
            let state = quantized_state(values, rows, cols, *bits, *group_size, left, &device)?;
            return Ok((state, Some(first)));
        }
        if let ProjectorKind::ExactSvd(_) | ProjectorKind::QuantizedSvd { .. } = self {
            return self.fit_svd(g, rank);
        }
        let state = match self {
            ProjectorKind::Identity => Ok(ProjectorState::Identity(())),
            ProjectorKind::Dct(proj_type) => {
                let [m, n] = g.dims();
                let left = left_side(*proj_type, m, n, "the DCT projector")?;
                let size = if left { m } else { n };
                let indices = if crate::dct::is_host_backend::<B>(&g.device()) {
                    // CPU backends: FFT scoring on the host beats the dense product at every
                    // size measured (docs/perf-notes.md)
                    let data = g.clone().into_data().convert::<f32>();
                    let values = data
                        .as_slice::<f32>()
                        .map_err(|e| EmberError::Internal(format!("gradient to host: {e:?}")))?;
                    let idx = crate::dct::top_r(&crate::dct::fft_scores(values, m, n, left), rank);
                    Tensor::from_data(TensorData::new(idx, [rank]), &g.device())
                } else {
                    let q = bases.get(size, &g.device());
                    // scores: ℓ1 norm of each column of G·Q (right) or row of Qᵀ·G (left)
                    B::dct_scores(g.clone(), q, left)
                        .topk_with_indices(rank, 0)
                        .1
                };
                Ok(ProjectorState::Selected(Selection {
                    indices,
                    left,
                    size,
                    dct: true,
                }))
            }
            ProjectorKind::RandomCoordinates { proj_type, seed } => {
                let (left, size) = one_side(*proj_type, g.dims());
                let mut rng = SplitMix64::new(*seed, &[salt, refreshes as u64]);
                let idx: Vec<i32> = rng
                    .sample(size, rank)
                    .into_iter()
                    .map(|i| i as i32)
                    .collect();
                let indices = Tensor::from_data(TensorData::new(idx, [rank]), &g.device());
                Ok(ProjectorState::Selected(Selection {
                    indices,
                    left,
                    size,
                    dct: false,
                }))
            }
            ProjectorKind::RandomOrthogonal { proj_type, seed } => {
                let (left, size) = one_side(*proj_type, g.dims());
                let mut rng = SplitMix64::new(*seed, &[salt, refreshes as u64]);
                let gauss = faer::Mat::<f64>::from_fn(size, rank, |_, _| rng.normal());
                let q = gauss.qr().compute_thin_Q();
                let device = g.device();
                Ok(if left {
                    let v: Vec<f32> = (0..size * rank)
                        .map(|k| q[(k / rank, k % rank)] as f32)
                        .collect();
                    ProjectorState::Left(Tensor::from_data(
                        TensorData::new(v, [size, rank]),
                        &device,
                    ))
                } else {
                    let v: Vec<f32> = (0..rank * size)
                        .map(|k| q[(k % size, k / size)] as f32)
                        .collect();
                    ProjectorState::Right(Tensor::from_data(
                        TensorData::new(v, [rank, size]),
                        &device,
                    ))
                })
            }
            ProjectorKind::ExactSvd(_)
            | ProjectorKind::AutoSvd(_)
            | ProjectorKind::QuantizedSvd { .. }
            | ProjectorKind::DeviceRange { .. }
            | ProjectorKind::Custom(_) => {
                unreachable!("fitted above")
            }
        }?;
        Ok((state, None))
    }

    fn fit_svd<B: Backend>(
        &self,
        g: &Tensor<B, 2>,
        rank: usize,
    ) -> Result<(ProjectorState<B>, Option<Vec<f32>>), EmberError> {
        let [m, n] = g.dims();
        let device = g.device();
        let data = g.clone().into_data().convert::<f32>();
        let values = data
            .as_slice::<f32>()
            .map_err(|e| EmberError::Internal(format!("gradient to host: {e:?}")))?;
        let svd = truncated_svd(values, m, n, rank)?;
        let side = match self {
            ProjectorKind::ExactSvd(t) => t.side(m, n),
            _ => ProjType::Std.side(m, n),
        };
        let first: Vec<f32> = match side {
            Side::Left | Side::Both => (0..m).map(|i| svd.u[i * rank]).collect(),
            Side::Right => svd.vt[..n].to_vec(),
        };
        let left = || Tensor::<B, 2>::from_data(TensorData::new(svd.u.clone(), [m, rank]), &device);
        let right =
            || Tensor::<B, 2>::from_data(TensorData::new(svd.vt.clone(), [rank, n]), &device);
        let state = match (self, side) {
            (
                ProjectorKind::QuantizedSvd {
                    bits, group_size, ..
                },
                side,
            ) => {
                let (values, rows, cols) = match side {
                    Side::Left => (&svd.u, m, rank),
                    _ => (&svd.vt, rank, n),
                };
                quantized_state(
                    values,
                    rows,
                    cols,
                    *bits,
                    *group_size,
                    side == Side::Left,
                    &device,
                )?
            }
            (_, Side::Left) => ProjectorState::Left(left()),
            (_, Side::Right) => ProjectorState::Right(right()),
            (_, Side::Both) => ProjectorState::Both(TwoSided {
                left: left(),
                right: right(),
            }),
        };
        Ok((state, Some(first)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use burn::backend::Flex;

    type B = Flex;

    /// `G` with singular values `0.8^i` and a little noise.
    fn decaying(m: usize, n: usize, seed: u64) -> Tensor<B, 2> {
        let mut rng = SplitMix64::new(seed, &[]);
        let k = m.min(n);
        let mut gauss = |rows: usize, cols: usize| {
            let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
            Tensor::<B, 2>::from_data(TensorData::new(v, [rows, cols]), &Default::default())
        };
        let u = crate::range::orthonormalize(gauss(m, k), 60);
        let v = crate::range::orthonormalize(gauss(n, k), 60);
        let noise = gauss(m, n).mul_scalar(1e-4);
        let s: Vec<f32> = (0..k).map(|i| 0.8f32.powi(i as i32)).collect();
        let s = Tensor::<B, 1>::from_data(TensorData::new(s, [k]), &Default::default());
        u.mul(s.unsqueeze()).matmul(v.transpose()) + noise
    }

    /// Q-GaLore's projector fitted on the device captures nearly the energy of the exact SVD's
    /// (both quantized to INT4), on both sides, and its first vector is the exact first singular
    /// vector up to sign; a warm refresh from the dequantized projector keeps it.
    #[test]
    fn device_quantized_projector_matches_the_exact_one() {
        let bases = SharedBases::<B>::new();
        for (m, n, r) in [(48, 96, 8), (96, 64, 8)] {
            let g = decaying(m, n, 3);
            let energy = |state: &ProjectorState<B>| -> f64 {
                let low = state.down(g.clone(), &bases);
                low.powi_scalar(2).sum().into_scalar() as f64
            };
            let kind = |device| ProjectorKind::QuantizedSvd {
                bits: 4,
                group_size: -1,
                device,
                power_iters: 1,
            };
            let (exact, exact_first) = kind(false).fit_with_first(&g, r, &bases, 1, 0).unwrap();
            let (dev, dev_first) = kind(true).fit_with_first(&g, r, &bases, 1, 0).unwrap();
            assert!(matches!(dev, ProjectorState::Quantized(_)));
            let ratio = energy(&dev) / energy(&exact);
            assert!(ratio > 0.98, "{m}x{n}: device/exact energy {ratio}");
            let (a, b) = (exact_first.unwrap(), dev_first.unwrap());
            let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let norms: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt()
                * b.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(
                (dot / norms).abs() > 0.99,
                "{m}x{n}: first vectors {}",
                dot / norms
            );
            // warm refresh on a slightly changed gradient
            let g2 = g.clone() + decaying(m, n, 4).mul_scalar(0.05);
            let (warm, _) = kind(true)
                .fit_warm(&g2, r, &bases, 1, 1, Some(&dev))
                .unwrap();
            let (exact2, _) = kind(false).fit_with_first(&g2, r, &bases, 1, 1).unwrap();
            let e = |s: &ProjectorState<B>| {
                s.down(g2.clone(), &bases)
                    .powi_scalar(2)
                    .sum()
                    .into_scalar() as f64
            };
            assert!(
                e(&warm) / e(&exact2) > 0.97,
                "{m}x{n}: warm {}",
                e(&warm) / e(&exact2)
            );
        }
    }
}

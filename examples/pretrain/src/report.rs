//! Weight bytes and hashes, loss-curve plots.

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;

use crate::*;

/// Bytes of every float and int parameter tensor of `module` (`numel × dtype size`).
pub fn param_bytes<B: Backend, M: Module<B>>(module: &M) -> usize {
    struct Bytes<B: Backend>(usize, std::marker::PhantomData<B>);
    impl<B: Backend> ModuleVisitor<B> for Bytes<B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let t = p.val();
            self.0 += t.shape().num_elements() * t.dtype().size();
        }
        fn visit_int<const D: usize>(&mut self, p: &Param<Tensor<B, D, Int>>) {
            let t = p.val();
            self.0 += t.shape().num_elements() * t.dtype().size();
        }
    }
    let mut v = Bytes::<B>(0, std::marker::PhantomData);
    module.visit(&mut v);
    v.0
}

/// A hash of the exact bits of every float and int parameter, in module order (FNV-1a over the values'
/// bytes, read back to the host): equal hashes mean bit-identical weights.
pub fn weights_hash<B: Backend, M: Module<B>>(module: &M) -> String {
    struct Hash<B: Backend> {
        h: u64,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: Backend> Hash<B> {
        fn bytes(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.h ^= b as u64;
                self.h = self.h.wrapping_mul(0x0000_0100_0000_01B3);
            }
        }
    }
    impl<B: Backend> ModuleVisitor<B> for Hash<B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.bytes(p.val().into_data().convert::<f32>().as_bytes());
        }

        fn visit_int<const D: usize>(&mut self, p: &Param<Tensor<B, D, Int>>) {
            self.bytes(p.val().into_data().convert::<i32>().as_bytes());
        }
    }
    let mut v = Hash::<B> {
        h: 0xcbf2_9ce4_8422_2325,
        _b: std::marker::PhantomData,
    };
    module.visit(&mut v);
    format!("{:016x}", v.h)
}

/// Loss-curve plot.
pub mod plot {
    use super::Summary;
    use plotters::prelude::*;
    use std::path::Path;

    /// Training loss (moving average over 20 steps) of every run, and each run's per-epoch
    /// validation loss as points, on one SVG chart.
    pub fn loss_curves(runs: &[Summary], path: &Path) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let smooth = |v: &[f64]| -> Vec<(f64, f64)> {
            (0..v.len())
                .map(|i| {
                    let lo = i.saturating_sub(19);
                    let w = &v[lo..=i];
                    ((i + 1) as f64, w.iter().sum::<f64>() / w.len() as f64)
                })
                .collect()
        };
        let steps = runs.iter().map(|r| r.train_loss.len()).max().unwrap_or(1) as f64;
        let curves: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| smooth(&r.train_loss)).collect();
        // y range: from the lowest point to the smoothed loss after the first 5% of steps
        let skip = (steps * 0.05) as usize;
        let lo = curves
            .iter()
            .flatten()
            .map(|p| p.1)
            .chain(runs.iter().flat_map(|r| r.valid_loss.iter().copied()))
            .fold(f64::INFINITY, f64::min);
        let hi = curves
            .iter()
            .filter_map(|c| c.get(skip).map(|p| p.1))
            .fold(f64::NEG_INFINITY, f64::max);
        let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Byte-level LLaMA on tiny Shakespeare: training loss (20-step mean) and validation loss (dots)",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..steps, (lo * 0.97)..(hi * 1.02))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc("cross-entropy (nats/byte)")
            .draw()
            .map_err(|e| err(&e))?;
        for (k, (r, c)) in runs.iter().zip(&curves).enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let mut label = match r.run.optimizer.as_str() {
                "adamw" => "adamw".to_string(),
                "frugal" => format!("frugal ρ={}", r.run.density),
                o => format!("{o} r={}", r.run.effective_rank()),
            };
            if r.run.int8_weights {
                label.push_str(" INT8 weights");
            }
            chart
                .draw_series(LineSeries::new(c.iter().copied(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            let per_epoch = r.train_loss.len() as f64 / r.valid_loss.len().max(1) as f64;
            chart
                .draw_series(
                    r.valid_loss.iter().enumerate().map(|(e, &v)| {
                        Circle::new(((e + 1) as f64 * per_epoch, v), 4, color.filled())
                    }),
                )
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

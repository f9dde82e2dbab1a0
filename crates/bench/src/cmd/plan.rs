//! `plan`: the settings of each method that fit a memory budget.

use clap::Args;
use ember_bench::estimate::{estimate, Dtype, Method, Settings};
use ember_bench::llama::LlamaShape;
use ember_bench::report::{csv, human, markdown, parse_bytes};
use serde::Serialize;

/// Options of `plan`.
#[derive(Args, Clone)]
pub struct PlanArgs {
    /// Preset (tiny, 60m, 130m, 350m, 1b, 7b) or a JSON config file.
    #[arg(long, default_value = "7b")]
    pub model: String,
    /// Memory budget, e.g. 24GiB.
    #[arg(long)]
    pub budget: String,
    /// Output JSON.
    #[arg(long)]
    pub json: bool,
    /// Output CSV.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
}

#[derive(Serialize)]
struct PlanRow {
    optimizer: String,
    rank: Option<usize>,
    density: Option<f64>,
    weights_dtype: Dtype,
    state_dtype: Dtype,
    total_bytes: usize,
    state_bytes: usize,
    fits: bool,
}

pub fn run(args: &PlanArgs) -> Result<(), String> {
    let (model, budget, json, as_csv) = (&args.model, &args.budget, args.json, args.csv);
    let shape = LlamaShape::resolve(model)?;
    let budget = parse_bytes(budget)?;
    let min_dim = shape.hidden_size.min(shape.intermediate_size);
    let mut rows = vec![];
    for method in Method::ALL {
        for weights in [Dtype::F32, Dtype::Bf16] {
            for state in [Dtype::F32, Dtype::Bf16, Dtype::Int8] {
                let candidates: Vec<(usize, f64)> = match method {
                    Method::Adamw => vec![(0, 0.0)],
                    Method::Frugal => [1.0, 0.5, 0.25, 0.125, 0.0625]
                        .iter()
                        .map(|&d| (0, d))
                        .collect(),
                    _ => (4..=20)
                        .rev()
                        .map(|p| 1usize << p)
                        .filter(|&r| r <= min_dim)
                        .map(|r| (r, 0.0))
                        .collect(),
                };
                // the largest rank (or density) that fits, for this dtype pair
                let best = candidates.into_iter().find_map(|(rank, density)| {
                    let s = Settings {
                        method,
                        rank,
                        density,
                        weights,
                        state,
                    };
                    estimate(&shape, s).ok().filter(|b| b.total_bytes <= budget)
                });
                if let Some(b) = best {
                    rows.push(PlanRow {
                        optimizer: b.optimizer,
                        rank: b.rank,
                        density: b.density,
                        weights_dtype: weights,
                        state_dtype: state,
                        total_bytes: b.total_bytes,
                        state_bytes: b.state_bytes,
                        fits: true,
                    });
                }
            }
        }
    }
    if rows.is_empty() {
        return Err(format!(
            "a budget of {} fits no method for {} (weights and gradients alone need {} in bf16)",
            human(budget),
            shape.name,
            human(4 * shape.param_count())
        ));
    }
    rows.sort_by(|a, b| {
        (
            &a.optimizer,
            std::cmp::Reverse(a.rank),
            std::cmp::Reverse((a.density.unwrap_or(0.0) * 1e6) as u64),
        )
            .cmp(&(
                &b.optimizer,
                std::cmp::Reverse(b.rank),
                std::cmp::Reverse((b.density.unwrap_or(0.0) * 1e6) as u64),
            ))
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap());
        return Ok(());
    }
    let header = [
        "optimizer",
        "rank",
        "weights",
        "state",
        "optimizer state",
        "total",
        "budget left",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.optimizer.to_string(),
                match (r.rank, r.density) {
                    (Some(k), _) => k.to_string(),
                    (_, Some(d)) => format!("ρ={d}"),
                    _ => "-".into(),
                },
                r.weights_dtype.name().to_string(),
                r.state_dtype.name().to_string(),
                human(r.state_bytes),
                human(r.total_bytes),
                human(budget - r.total_bytes),
            ]
        })
        .collect();
    if as_csv {
        print!("{}", csv(&header, &cells));
    } else {
        println!(
            "Settings of {} that fit {} by the estimate (weights + gradients + optimizer state; activations not included), largest rank first\n",
            shape.name,
            human(budget)
        );
        print!("{}", markdown(&header, &cells));
    }
    Ok(())
}

//! `plan`: the settings of each method that fit a memory budget, by the estimated peak of a
//! training step (weights, gradients held at once, optimizer state, activations at the given
//! batch and sequence, the optimizer step's temporaries). Every setting listed is one `measure`
//! runs (`--weights-dtype`, `--state-dtype`, `--layerwise`, `--int8-weights`).

use clap::Args;
use ember_bench::estimate::{
    estimate_groups, estimate_run, Breakdown, Dtype, Method, RunShape, Settings,
};
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
    /// Sequences per step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Output JSON.
    #[arg(long)]
    pub json: bool,
    /// Output CSV.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// Parameter groups (JSON, `ember::groups`): plan this one optimizer (weights dtype,
    /// layer-wise or not) instead of every method.
    #[arg(long)]
    pub groups: Option<std::path::PathBuf>,
    /// Only this rank (GaLore, Fira, DCT, Q-GaLore; e.g. the paper's 1024 for 7B) instead of
    /// the largest rank that fits.
    #[arg(long)]
    pub rank: Option<usize>,
    /// Device memory the tensors cannot use, taken from the budget first: the CUDA context
    /// (1.07 GB measured on the H100 with CUDA 12; less on smaller GPUs) and what the
    /// allocator's pools keep beyond the estimated peak. `0` to compare the estimate alone.
    #[arg(long, default_value = "1GiB")]
    pub reserve: String,
}

#[derive(Serialize)]
struct PlanRow {
    optimizer: String,
    rank: Option<usize>,
    density: Option<f64>,
    weights_dtype: Dtype,
    state_dtype: Dtype,
    layerwise: bool,
    int8_weights: bool,
    weight_bytes: usize,
    grad_bytes: usize,
    state_bytes: usize,
    activation_bytes: usize,
    temporary_bytes: usize,
    /// The estimated peak: what is compared with the budget.
    peak_bytes: usize,
    /// The `ember-bench measure` arguments of this setting.
    measure: String,
}

/// Ranks (or densities) of a method, largest first (`rank`: only that one).
fn candidates(method: Method, min_dim: usize, rank: Option<usize>) -> Vec<(usize, f64)> {
    match method {
        Method::Adamw => vec![(0, 0.0)],
        Method::Frugal => [1.0, 0.5, 0.25, 0.125, 0.0625]
            .iter()
            .map(|&d| (0, d))
            .collect(),
        _ if rank.is_some() => rank.into_iter().map(|r| (r, 0.0)).collect(),
        _ => (4..=20)
            .rev()
            .map(|p| 1usize << p)
            .filter(|&r| r <= min_dim)
            .map(|r| (r, 0.0))
            .collect(),
    }
}

fn row(b: Breakdown, model: &str, batch: usize, seq: usize) -> PlanRow {
    let mut measure = format!(
        "measure --model {model} --optimizer {} --weights-dtype {} --state-dtype {} --batch {batch} --seq {seq}",
        b.optimizer,
        b.weights_dtype.name(),
        b.state_dtype.name(),
    );
    if let Some(r) = b.rank {
        measure += &format!(" --rank {r}");
    }
    if let Some(d) = b.density {
        measure += &format!(" --density {d}");
    }
    if b.run.layerwise {
        measure += " --layerwise";
    }
    if b.run.int8_weights {
        measure += " --int8-weights";
    }
    PlanRow {
        optimizer: b.optimizer,
        rank: b.rank,
        density: b.density,
        weights_dtype: b.weights_dtype,
        state_dtype: b.state_dtype,
        layerwise: b.run.layerwise,
        int8_weights: b.run.int8_weights,
        weight_bytes: b.weight_bytes,
        grad_bytes: b.grad_bytes,
        state_bytes: b.state_bytes,
        activation_bytes: b.activation_bytes.unwrap_or(0),
        temporary_bytes: b.temporary_bytes.unwrap_or(0),
        peak_bytes: b.peak_bytes.unwrap_or(b.total_bytes),
        measure,
    }
}

pub fn run(args: &PlanArgs) -> Result<(), String> {
    let shape = LlamaShape::resolve(&args.model)?;
    let total_budget = parse_bytes(&args.budget)?;
    let reserve = match args.reserve.trim() {
        "0" => 0,
        r => parse_bytes(r)?,
    };
    if reserve >= total_budget {
        return Err(format!(
            "--reserve {} leaves nothing of --budget {}",
            human(reserve),
            human(total_budget)
        ));
    }
    // what the tensors may use
    let budget = total_budget - reserve;
    if args.batch == 0 || args.seq < 2 {
        return Err("--batch must be positive and --seq at least 2".into());
    }
    let min_dim = shape.hidden_size.min(shape.intermediate_size);
    // a rank no targeted layer can take is the caller's mistake, not a setting that does not fit
    if let Some(r) = args.rank {
        if r == 0 || r > min_dim {
            return Err(format!(
                "--rank {r} does not fit {}: a rank goes from 1 to {min_dim}, the smaller side of \
                 its targeted layers",
                shape.name
            ));
        }
    }
    let mut rows = vec![];
    let groups = args
        .groups
        .as_ref()
        .map(ember::groups::GroupsConfig::load)
        .transpose()?;
    if let Some(g) = &groups {
        // clipping by the global norm needs every gradient at once: not layer-wise
        let global = matches!(g.clipping, Some(ember::groups::ClippingSpec::GlobalNorm(_)));
        for layerwise in [false, true].into_iter().filter(|l| !(*l && global)) {
            for weights in [Dtype::F32, Dtype::Bf16] {
                let run = RunShape {
                    layerwise,
                    int8_weights: false,
                    tokens: Some((args.batch, args.seq)),
                    native_bf16: true,
                };
                let b = estimate_groups(&shape, g, weights, run)?;
                if b.peak_bytes.unwrap_or(usize::MAX) <= budget {
                    let mut r = row(b, &args.model, args.batch, args.seq);
                    r.measure = format!(
                        "measure --model {} --groups {} --weights-dtype {} --batch {} --seq {}{}",
                        args.model,
                        args.groups.as_ref().unwrap().display(),
                        weights.name(),
                        args.batch,
                        args.seq,
                        if layerwise { " --layerwise" } else { "" }
                    );
                    rows.push(r);
                }
            }
        }
    }
    for method in Method::ALL.into_iter().filter(|_| groups.is_none()) {
        // INT8 weights: Q-GaLore's mode
        let int8_options: &[bool] = if method == Method::Qgalore {
            &[false, true]
        } else {
            &[false]
        };
        for &int8_weights in int8_options {
            for layerwise in [false, true] {
                for weights in [Dtype::F32, Dtype::Bf16] {
                    for state in [Dtype::F32, Dtype::Bf16, Dtype::Int8] {
                        let run = RunShape {
                            layerwise,
                            int8_weights,
                            tokens: Some((args.batch, args.seq)),
                            native_bf16: true,
                        };
                        // the largest rank (or density) that fits
                        let best = candidates(method, min_dim, args.rank).into_iter().find_map(
                            |(rank, density)| {
                                let s = Settings {
                                    method,
                                    rank,
                                    density,
                                    weights,
                                    state,
                                };
                                // (an error here is a candidate this model has no layer for:
                                // a density that rounds to rank 0; `--rank` was checked above)
                                estimate_run(&shape, s, run)
                                    .ok()
                                    .filter(|b| b.peak_bytes.unwrap_or(usize::MAX) <= budget)
                            },
                        );
                        if let Some(b) = best {
                            rows.push(row(b, &args.model, args.batch, args.seq));
                        }
                    }
                }
            }
        }
    }
    if rows.is_empty() {
        return Err(format!(
            "a budget of {} ({} of it reserved) fits no setting for {} at {}×{} tokens (bf16 \
             weights alone take {})",
            human(total_budget),
            human(reserve),
            shape.name,
            args.batch,
            args.seq,
            human(2 * shape.param_count())
        ));
    }
    rows.sort_by(|a, b| {
        (
            &a.optimizer,
            std::cmp::Reverse(a.rank),
            std::cmp::Reverse((a.density.unwrap_or(0.0) * 1e6) as u64),
            a.peak_bytes,
        )
            .cmp(&(
                &b.optimizer,
                std::cmp::Reverse(b.rank),
                std::cmp::Reverse((b.density.unwrap_or(0.0) * 1e6) as u64),
                b.peak_bytes,
            ))
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap());
        return Ok(());
    }
    let header = [
        "optimizer",
        "rank",
        "weights",
        "state",
        "layer-wise",
        "weights held",
        "grads held",
        "optimizer state",
        "activations",
        "step temporaries",
        "peak (estimate)",
        "budget left",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.optimizer.clone(),
                match (r.rank, r.density) {
                    (Some(k), _) => k.to_string(),
                    (_, Some(d)) => format!("ρ={d}"),
                    _ => "-".into(),
                },
                if r.int8_weights {
                    format!("int8 + {}", r.weights_dtype.name())
                } else {
                    r.weights_dtype.name().to_string()
                },
                r.state_dtype.name().to_string(),
                if r.layerwise { "yes" } else { "no" }.into(),
                human(r.weight_bytes),
                human(r.grad_bytes),
                human(r.state_bytes),
                human(r.activation_bytes),
                human(r.temporary_bytes),
                human(r.peak_bytes),
                human(budget - r.peak_bytes),
            ]
        })
        .collect();
    if args.csv {
        print!("{}", csv(&header, &cells));
    } else {
        println!(
            "Settings of {} that fit {} ({} of it reserved for the CUDA context and the \
             allocator's slack, `--reserve`) by the estimated peak of a training step at {}×{} \
             tokens: weights + gradients held at once (layer-wise: one stage's) + optimizer state \
             + the larger of the activations (layer-wise: block inputs and one block) and the \
             optimizer step's temporaries (docs/memory.md); {}. `--json` gives each row's \
             `ember-bench measure` command.\n",
            shape.name,
            human(total_budget),
            human(reserve),
            args.batch,
            args.seq,
            match args.rank {
                Some(r) => format!("rank {r}"),
                None => "largest rank first".into(),
            }
        );
        print!("{}", markdown(&header, &cells));
    }
    Ok(())
}

//! `soak`: many steps of each method on the CPU, watching the heap's peak, the projectors'
//! orthonormality, non-finite gradients and the loss (one JSON object per method).

use clap::Args;
use ember_bench::estimate::{Dtype, Settings};
use ember_bench::llama::LlamaShape;
use ember_bench::report::{human, markdown};
use ember_bench::soak::{soak, SoakResult};

use super::{default_rank, methods};

/// Options of `soak`.
#[derive(Args, Clone)]
pub struct SoakArgs {
    /// Preset or JSON config file.
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Optimizer, a comma-separated list, or `all`.
    #[arg(long, default_value = "all")]
    pub optimizer: String,
    /// Steps per method (a projector refresh every 10).
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// Rank (default: the preset's).
    #[arg(long)]
    pub rank: Option<usize>,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    /// One JSON object per method (one per line).
    #[arg(long)]
    pub json: bool,
    /// Run every method in this process (default: a fresh process per method).
    #[arg(long, hide = true)]
    pub in_process: bool,
}

pub fn run(a: &SoakArgs) -> Result<(), String> {
    let shape = LlamaShape::resolve(&a.model)?;
    if a.steps == 0 || a.batch == 0 || a.seq < 2 || a.seq > shape.max_sequence_length {
        return Err(
            "--steps and --batch must be positive, --seq in 2..=max_sequence_length".into(),
        );
    }
    let list = methods(&a.optimizer)?;
    let mut results: Vec<SoakResult> = vec![];
    // with --json, each method's line as soon as it is done (a long soak that is stopped keeps
    // the methods it finished)
    let emit = |r: &SoakResult| {
        if a.json {
            println!("{}", serde_json::to_string(r).unwrap());
        }
    };
    for method in list.iter().copied() {
        if list.len() > 1 && !a.in_process {
            let r = child(a, method.name())?;
            emit(&r);
            results.push(r);
            continue;
        }
        let s = Settings {
            method,
            rank: a.rank.unwrap_or_else(|| default_rank(&shape)),
            density: 0.25,
            weights: Dtype::F32,
            state: Dtype::F32,
        };
        type B = burn::backend::Autodiff<burn::backend::Flex>;
        let r = soak::<B>(
            &shape,
            &s,
            a.steps,
            (a.batch, a.seq),
            &Default::default(),
            !a.json,
        )?;
        emit(&r);
        results.push(r);
    }
    if a.json {
        return Ok(());
    }
    let header = [
        "optimizer",
        "steps",
        "peak heap at 10%",
        "peak heap at the end",
        "of it GEMM workspaces",
        "growth",
        "max |PᵀP − I|",
        "refreshes checked",
        "non-finite steps",
        "loss first → last 10%",
        "seconds",
    ];
    let cells: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.optimizer.clone(),
                r.steps.to_string(),
                r.peak_heap_first.map(human).unwrap_or_else(|| "n/a".into()),
                r.peak_heap_last.map(human).unwrap_or_else(|| "n/a".into()),
                r.workspace_heap_last
                    .map(human)
                    .unwrap_or_else(|| "n/a".into()),
                r.peak_heap_growth
                    .map(|g| format!("{:+.3}%", 100.0 * g))
                    .unwrap_or_else(|| "n/a".into()),
                r.max_orthonormality_error
                    .map(|e| format!("{e:.1e}"))
                    .unwrap_or_else(|| "—".into()),
                r.refreshes.to_string(),
                r.non_finite_steps.to_string(),
                format!("{:.3} → {:.3}", r.loss_first, r.loss_tail_mean),
                format!("{:.0}", r.seconds),
            ]
        })
        .collect();
    println!(
        "Soak on flex, {} ({}×{} tokens a step, a projector refresh every 10 steps, one process per method): \
         peak heap of a step measured by the counting allocator; \"of it GEMM workspaces\": address \
         space faer's matrix products reserve per thread at their first use, mostly never written\n",
        shape.name, a.batch, a.seq
    );
    print!("{}", markdown(&header, &cells));
    Ok(())
}

fn child(a: &SoakArgs, method: &str) -> Result<SoakResult, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut args = vec![
        "soak".to_string(),
        "--in-process".into(),
        "--json".into(),
        "--model".into(),
        a.model.clone(),
        "--optimizer".into(),
        method.into(),
        "--steps".into(),
        a.steps.to_string(),
        "--batch".into(),
        a.batch.to_string(),
        "--seq".into(),
        a.seq.to_string(),
    ];
    if let Some(r) = a.rank {
        args.extend(["--rank".into(), r.to_string()]);
    }
    let out = std::process::Command::new(exe)
        .args(&args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("running the {method} soak: {e}"))?;
    if !out.status.success() {
        return Err(format!("the {method} soak failed ({})", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("reading the {method} soak: {e}"))
}

//! `estimate`: the analytic breakdown (docs/memory.md).

use ember_bench::estimate::{estimate_groups, estimate_run, Breakdown, RunShape};
use ember_bench::llama::LlamaShape;
use ember_bench::report::{csv, human, markdown, plot};

use super::{rank_cell, settings};
use crate::Common;

pub fn run(c: &Common) -> Result<(), String> {
    let shape = LlamaShape::resolve(&c.model)?;
    // `--layerwise`, `--int8-weights` and `--batch`/`--seq` shape the run for every optimizer
    let run = RunShape {
        layerwise: c.layerwise,
        int8_weights: c.int8_weights,
        tokens: c.batch.zip(c.seq),
        // a GPU run (CUDA): GaLore's projector of bf16 weights held in bf16
        native_bf16: true,
    };
    let rows: Vec<Breakdown> = match &c.groups {
        Some(path) => {
            let g = ember::groups::GroupsConfig::load(path)?;
            vec![estimate_groups(&shape, &g, c.weights_dtype, run)?]
        }
        None => settings(c, &shape)?
            .into_iter()
            .map(|s| estimate_run(&shape, s, run))
            .collect::<Result<_, _>>()?,
    };
    if let Some(p) = &c.plot {
        plot(p, &format!("{} (estimate)", shape.name), &rows)?;
    }
    if c.json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap());
        return Ok(());
    }
    let header = [
        "optimizer",
        "rank",
        "params",
        "weights",
        "grads",
        "optimizer state",
        "total",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|b| {
            vec![
                b.optimizer.to_string(),
                rank_cell(b),
                b.param_count.to_string(),
                human(b.weight_bytes),
                human(b.grad_bytes),
                human(b.state_bytes),
                human(b.total_bytes),
            ]
        })
        .collect();
    if c.csv {
        let raw: Vec<Vec<String>> = rows
            .iter()
            .map(|b| {
                vec![
                    b.optimizer.to_string(),
                    rank_cell(b),
                    b.param_count.to_string(),
                    b.weight_bytes.to_string(),
                    b.grad_bytes.to_string(),
                    b.state_bytes.to_string(),
                    b.total_bytes.to_string(),
                ]
            })
            .collect();
        print!("{}", csv(&header, &raw));
    } else {
        println!(
            "Estimate for {} ({} parameters; weights {:?}, state {:?}); method: docs/memory.md\n",
            shape.name,
            shape.param_count(),
            c.weights_dtype,
            c.state_dtype
        );
        print!("{}", markdown(&header, &cells));
        for b in &rows {
            if let Some(groups) = &b.group_state_bytes {
                println!("\nOptimizer state by group (shared DCT bases and 8-bit maps: in the total only):\n");
                let cells: Vec<Vec<String>> = groups
                    .iter()
                    .map(|(name, bytes)| vec![name.clone(), format!("{} ({bytes})", human(*bytes))])
                    .collect();
                print!("{}", markdown(&["group", "state"], &cells));
            }
        }
    }
    Ok(())
}

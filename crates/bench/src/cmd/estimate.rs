//! `estimate`: the analytic breakdown (docs/memory.md).

use ember_bench::estimate::{estimate, Breakdown};
use ember_bench::llama::LlamaShape;
use ember_bench::report::{csv, human, markdown, plot};

use super::{rank_cell, settings};
use crate::Common;

pub fn run(c: &Common) -> Result<(), String> {
    let shape = LlamaShape::resolve(&c.model)?;
    let rows: Vec<Breakdown> = settings(c, &shape)?
        .into_iter()
        .map(|s| estimate(&shape, s))
        .collect::<Result<_, _>>()?;
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
    }
    Ok(())
}

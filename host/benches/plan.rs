#![allow(missing_docs)]
//! Loading and planning large workflows: `Workflow::from_str` (which
//! validates and plans) on layered DAGs generated in memory.

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use stepbox::workflow::Workflow;

/// The allocator the `stepbox` binary uses, so the figures are the CLI's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A layered DAG of `steps` steps, 100 per layer; each step after the first
/// layer needs 1–3 steps of the previous layer and takes the first one's
/// output as input through a `${steps.X}` template.
fn layered_yaml(steps: usize) -> String {
    const WIDTH: usize = 100;
    let mut text = String::from("name: bench\ndefaults: {timeout: 5s}\nsteps:\n");
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..steps {
        let (layer, slot) = (i / WIDTH, i % WIDTH);
        text.push_str(&format!("  - id: s{i}\n    component: steps/s{slot}.wasm\n"));
        if layer > 0 {
            let count = 1 + (next() % 3) as usize;
            let needs: Vec<String> = (0..count)
                .map(|_| format!("s{}", (layer - 1) * WIDTH + (next() as usize % WIDTH)))
                .collect();
            text.push_str(&format!(
                "    needs: [{}]\n    input: {{value: \"${{steps.{}.value}}\", n: {i}}}\n",
                needs.join(", "),
                needs[0]
            ));
        }
    }
    text
}

fn bench_plan(c: &mut Criterion) {
    let mut group = c.benchmark_group("workflow");
    for steps in [1_000, 10_000] {
        let text = layered_yaml(steps);
        group.bench_with_input(BenchmarkId::new("from_str+plan", steps), &text, |b, text| {
            b.iter(|| {
                let workflow = Workflow::from_str(black_box(text), Path::new("bench.yaml")).unwrap();
                black_box(workflow.plan().level_count())
            })
        });
        // The same DAG as JSON, which loads through the fast path.
        let value: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let json = serde_json::to_string(&value).unwrap();
        group.bench_with_input(BenchmarkId::new("from_str+plan json", steps), &json, |b, json| {
            b.iter(|| {
                let workflow = Workflow::from_str(black_box(json), Path::new("bench.json")).unwrap();
                black_box(workflow.plan().level_count())
            })
        });
        // The YAML parser alone, for comparison: what validation adds is the difference.
        group.bench_with_input(BenchmarkId::new("yaml_parse_only", steps), &text, |b, text| {
            b.iter(|| black_box(serde_saphyr::from_str::<serde::de::IgnoredAny>(black_box(text)).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);

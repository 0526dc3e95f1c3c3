//! `cnnc bench FILE --batch B [--threads N] [--layers] [--format text|json]`: compile once,
//! warm up, then time inference and a training step (forward, loss, backward, the network's
//! optimiser update — SGD unless its `train` section says otherwise), each for about a second.
//!
//! Figures: images per second; achieved GFLOP/s counting 2 flops per multiply-add of
//! `ir::params` (conv and dense products only), where a training step counts 3 × the forward
//! multiply-adds (forward, input gradient, weight gradient, as is customary); the fraction of
//! the machine's peak (measured on the bench's threads by `runtime::peak`, or `--peak`); the
//! JIT compile time of every kernel (forward and backward); and the peak memory, which is the
//! engine's workspace (activations, gradients, parameters, with
//! activations and gradients sharing memory as `lower::memory` plans) plus the optimiser's
//! state, all allocated once, beside what it would be without sharing. `--layers` times each
//! kernel of the plan alone with `Compiled::run`, grouped by layer. `--no-fuse` lowers the
//! graph without the fusion passes.

use std::path::Path;
use std::time::Instant;

use rand::rngs::ChaCha8Rng;
use rand::SeedableRng;
use serde_json::json;

use super::engine_io::{load_one, loss_of, set_threads};
use super::{Failure, Format};
use crate::ir::{params, Graph, Loss, Op, TrainConfig};
use crate::jit::{Buffers, Compiled};
use crate::lower::memory::Layout;
use crate::lower::step::{plan, BufferRole, Plan};
use crate::runtime::engine::{self, Engine, EngineError, Fusion, Memory, Truth};
use crate::runtime::init::initialize;
use crate::runtime::optim::{Optimizer, OptimizerState};
use crate::runtime::peak::{self, Peak};

/// The peak the figures are a fraction of: given with `--peak`, else measured on the bench's
/// threads (`runtime::peak`), else unknown.
#[derive(Clone, Copy, Debug)]
enum PeakFigure {
    Given(f64),
    Measured(Peak),
    Unknown,
}

impl PeakFigure {
    fn gflops(self) -> Option<f64> {
        match self {
            PeakFigure::Given(g) => Some(g),
            PeakFigure::Measured(p) => Some(p.gflops),
            PeakFigure::Unknown => None,
        }
    }

    fn describe(self) -> String {
        match self {
            PeakFigure::Given(g) => format!("peak {g} GFLOP/s (given)"),
            PeakFigure::Measured(p) => format!(
                "peak {:.1} GFLOP/s (measured: {} thread{} of {}-lane FMAs; with 4-lane \
                 ones, the generated code's, {:.1})",
                p.gflops,
                p.threads,
                if p.threads == 1 { "" } else { "s" },
                p.lanes,
                p.f32x4_gflops
            ),
            PeakFigure::Unknown => "peak unknown on this CPU (give it with --peak)".into(),
        }
    }
}

/// How long each measurement runs, at least (and at least [`MIN_ITERATIONS`] iterations).
const MEASURE_SECONDS: f64 = 1.0;
const MIN_ITERATIONS: usize = 3;
const WARMUP_ITERATIONS: usize = 2;

pub struct Args<'a> {
    pub file: &'a Path,
    pub network: Option<&'a str>,
    pub batch: usize,
    pub threads: Option<usize>,
    pub layers: bool,
    /// `None`: measured.
    pub peak_gflops: Option<f64>,
    pub fusion: Fusion,
    pub format: Format,
}

/// Seconds per iteration of `step`, run until [`MEASURE_SECONDS`] have passed.
fn measure(mut step: impl FnMut() -> Result<(), Failure>) -> Result<f64, Failure> {
    let start = Instant::now();
    let mut iterations = 0;
    while iterations < MIN_ITERATIONS || start.elapsed().as_secs_f64() < MEASURE_SECONDS {
        step()?;
        iterations += 1;
    }
    Ok(start.elapsed().as_secs_f64() / iterations as f64)
}

/// A deterministic input batch with values in [0, 1], like scaled pixels.
fn sample_input(graph: &Graph, batch: usize) -> Vec<f32> {
    (0..batch * graph.input().shape.numel())
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect()
}

/// Class `i mod classes` for sample `i`, or zero targets for mean squared error.
enum Answers {
    Classes(Vec<u32>),
    Targets(Vec<f32>),
}

impl Answers {
    fn new(graph: &Graph, batch: usize, loss: Loss) -> Answers {
        let outputs = graph.output_shape().numel();
        match loss {
            Loss::CrossEntropy => {
                Answers::Classes((0..batch).map(|i| (i % outputs.max(1)) as u32).collect())
            }
            Loss::Mse => Answers::Targets(vec![0.0; batch * outputs]),
        }
    }
    fn truth(&self) -> Truth<'_> {
        match self {
            Answers::Classes(c) => Truth::Classes(c),
            Answers::Targets(t) => Truth::Targets(t),
        }
    }
}

fn state_bytes(state: &OptimizerState) -> usize {
    let floats: usize = match state {
        OptimizerState::Sgd { momentum_buffers } => {
            momentum_buffers.iter().flatten().map(Vec::len).sum()
        }
        OptimizerState::Adam {
            exp_avg,
            exp_avg_sq,
            ..
        } => exp_avg.iter().chain(exp_avg_sq).map(Vec::len).sum(),
    };
    floats * std::mem::size_of::<f32>()
}

pub fn run(args: &Args, sources: &mut crate::span::SourceMap) -> Result<String, Failure> {
    let graph = load_one(args.file, args.network, sources)?;
    if args.batch == 0 {
        return Err(Failure::Runtime("--batch must be at least 1".into()));
    }
    let threads = set_threads(args.threads)?;
    let config = graph.train.clone().unwrap_or_else(TrainConfig::default);
    let loss = loss_of(&graph);
    let runtime = |e: EngineError| Failure::Runtime(e.to_string());

    let mut engine = Engine::with_options(
        &graph,
        args.batch,
        loss,
        threads,
        args.fusion,
        Memory::Planned,
    )
    .map_err(runtime)?;
    let values = initialize(&graph, config.init, config.seed);
    engine.set_params(&values).map_err(runtime)?;
    let input = sample_input(&graph, args.batch);
    let answers = Answers::new(&graph, args.batch, loss);
    let mut optimizer = Optimizer::new(&config.optimizer, &graph.params);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);

    let mut infer = || engine_infer(&mut engine, &input);
    for _ in 0..WARMUP_ITERATIONS {
        infer()?;
    }
    let infer_seconds = measure(infer)?;
    let mut train = || -> Result<(), Failure> {
        engine
            .train_step(&input, answers.truth(), &mut rng)
            .map_err(runtime)?;
        engine.update(&mut optimizer);
        Ok(())
    };
    for _ in 0..WARMUP_ITERATIONS {
        train()?;
    }
    let train_seconds = measure(train)?;

    let macs = params::totals(&graph).macs as f64;
    let batch = args.batch as f64;
    let infer_gflops = 2.0 * macs * batch / infer_seconds / 1e9;
    let train_gflops = 3.0 * 2.0 * macs * batch / train_seconds / 1e9;
    let buffer_bytes = engine.buffer_bytes();
    let unshared_buffer_bytes = engine.unshared_buffer_bytes();
    let optimizer_bytes = state_bytes(optimizer.state());
    let figures = Figures {
        network: &graph.name,
        batch: args.batch,
        threads,
        optimizer: optimizer.state().name(),
        compile_seconds: engine.compile_seconds(),
        infer_seconds,
        train_seconds,
        infer_gflops,
        train_gflops,
        peak: match args.peak_gflops {
            Some(g) => PeakFigure::Given(g),
            None => peak::measure().map_or(PeakFigure::Unknown, PeakFigure::Measured),
        },
        buffer_bytes,
        unshared_buffer_bytes,
        optimizer_bytes,
        macs_per_image: macs as u64,
    };
    let layers = if args.layers {
        let lowered = args.fusion.apply(&graph);
        Some(time_layers(&lowered, args.batch, loss, threads, &values)?)
    } else {
        None
    };
    Ok(match args.format {
        Format::Text => figures.text(layers.as_deref()),
        Format::Json => figures.json(layers.as_deref()),
    })
}

fn engine_infer(engine: &mut Engine, input: &[f32]) -> Result<(), Failure> {
    engine
        .infer(input)
        .map(|_| ())
        .map_err(|e| Failure::Runtime(e.to_string()))
}

/// Images per second: whole numbers when large, two decimals for big networks' small rates.
fn rate(images_per_second: f64) -> String {
    if images_per_second >= 100.0 {
        format!("{images_per_second:.0}")
    } else {
        format!("{images_per_second:.2}")
    }
}

struct Figures<'a> {
    network: &'a str,
    batch: usize,
    threads: usize,
    optimizer: &'static str,
    compile_seconds: f64,
    infer_seconds: f64,
    train_seconds: f64,
    infer_gflops: f64,
    train_gflops: f64,
    peak: PeakFigure,
    /// The workspace, planned; and what it would be if no buffers shared memory.
    buffer_bytes: usize,
    unshared_buffer_bytes: usize,
    optimizer_bytes: usize,
    macs_per_image: u64,
}

impl Figures<'_> {
    fn images_per_second(&self, seconds: f64) -> f64 {
        self.batch as f64 / seconds
    }

    fn text(&self, layers: Option<&[KernelTime]>) -> String {
        let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
        let row = |label: &str, seconds: f64, gflops: f64| {
            let fraction = match self.peak.gflops() {
                Some(peak) => format!("{:.1}%", 100.0 * gflops / peak),
                None => "-".into(),
            };
            format!(
                "{label:<15}{:>12}{:>12.3}{:>10.2}{fraction:>10}\n",
                rate(self.images_per_second(seconds)),
                seconds * 1e3,
                gflops,
            )
        };
        let mut out = format!(
            "bench {}: batch {}, {} threads, optimiser {}\n\
             JIT compile (forward + backward): {:.1} ms\n\n\
             {:<15}{:>12}{:>12}{:>10}{:>10}\n",
            self.network,
            self.batch,
            self.threads,
            self.optimizer,
            self.compile_seconds * 1e3,
            "",
            "images/s",
            "ms/batch",
            "GFLOP/s",
            "of peak"
        );
        out += &row("inference", self.infer_seconds, self.infer_gflops);
        out += &row("training step", self.train_seconds, self.train_gflops);
        out += &format!(
            "\nGFLOP/s count 2 flops per multiply-add ({} per image); a training step counts 3x the \
             forward's; {}\n\
             peak memory: {:.2} MiB (planned; {:.2} MiB without sharing): workspace {:.2} MiB + \
             optimiser state {:.2} MiB\n",
            self.macs_per_image,
            self.peak.describe(),
            mib(self.buffer_bytes + self.optimizer_bytes),
            mib(self.unshared_buffer_bytes + self.optimizer_bytes),
            mib(self.buffer_bytes),
            mib(self.optimizer_bytes),
        );
        if let Some(layers) = layers {
            out += &layers_text(layers);
        }
        out
    }

    fn json(&self, layers: Option<&[KernelTime]>) -> String {
        let mut value = json!({
            "network": self.network,
            "batch": self.batch,
            "threads": self.threads,
            "optimizer": self.optimizer,
            "compile_seconds": self.compile_seconds,
            "infer_images_per_second": self.images_per_second(self.infer_seconds),
            "train_images_per_second": self.images_per_second(self.train_seconds),
            "infer_seconds_per_batch": self.infer_seconds,
            "train_seconds_per_batch": self.train_seconds,
            "macs_per_image": self.macs_per_image,
            "gflops": { "infer": self.infer_gflops, "train": self.train_gflops },
            "peak_gflops": self.peak.gflops(),
            "peak_source": match self.peak {
                PeakFigure::Given(_) => "given",
                PeakFigure::Measured(_) => "measured",
                PeakFigure::Unknown => "unknown",
            },
            "peak_lanes": match self.peak {
                PeakFigure::Measured(p) => Some(p.lanes),
                _ => None,
            },
            "f32x4_peak_gflops": match self.peak {
                PeakFigure::Measured(p) => Some(p.f32x4_gflops),
                _ => None,
            },
            "peak_fraction": self.peak.gflops().map(|peak| json!({
                "infer": self.infer_gflops / peak,
                "train": self.train_gflops / peak,
            })),
            "peak_bytes": self.buffer_bytes + self.optimizer_bytes,
            "buffer_bytes": self.buffer_bytes,
            "peak_bytes_unshared": self.unshared_buffer_bytes + self.optimizer_bytes,
            "buffer_bytes_unshared": self.unshared_buffer_bytes,
            "optimizer_bytes": self.optimizer_bytes,
        });
        if let Some(layers) = layers {
            value["layers"] = layers
                .iter()
                .map(|k| {
                    json!({
                        "layer": k.layer,
                        "kernel": k.kernel,
                        "infer_seconds": k.infer_seconds,
                        "train_seconds": k.train_seconds,
                        "flops": k.flops,
                        "gflops": k.gflops(),
                    })
                })
                .collect();
        }
        format!("{value:#}\n")
    }
}

/// One kernel of the plan, timed alone: seconds per run in the inference schedule and in the
/// training step (`None` when it is not part of it).
struct KernelTime {
    layer: String,
    kernel: String,
    infer_seconds: Option<f64>,
    train_seconds: Option<f64>,
    /// Flops of one run (conv and dense products), 0 for other kernels.
    flops: f64,
}

impl KernelTime {
    fn gflops(&self) -> Option<f64> {
        let seconds = self.train_seconds.or(self.infer_seconds)?;
        (self.flops > 0.0).then(|| self.flops / seconds / 1e9)
    }
}

/// Flops of one run of a kernel: 2 × the layer's multiply-adds for the forward, input-gradient
/// and weight-gradient kernels of conv and dense, which each do the layer's products once.
fn kernel_flops(graph: &Graph, layer: &str, role: &str, batch: usize) -> f64 {
    let Some(id) = graph.node_ids().find(|&id| graph.node(id).name == layer) else {
        return 0.0;
    };
    let contraction = matches!(graph.node(id).op, Op::Conv(_) | Op::Dense(_));
    let products = matches!(
        role,
        "forward" | "forward_folded" | "forward_train" | "backward_input" | "backward_weight"
    );
    if contraction && products {
        2.0 * params::node_macs(graph, id) as f64 * batch as f64
    } else {
        0.0
    }
}

/// Times every kernel of the plan: each schedule is run whole (so every kernel sees the data
/// it would in a real step) for about a second, with a clock around each kernel.
fn time_layers(
    graph: &Graph,
    batch: usize,
    loss: Loss,
    threads: usize,
    values: &[Vec<f32>],
) -> Result<Vec<KernelTime>, Failure> {
    let plan = plan(graph, batch, loss);
    let lens: Vec<usize> = plan.buffers.iter().map(|b| b.len).collect();
    let jit = |e: crate::jit::JitError| Failure::Runtime(e.to_string());
    let compiled = Compiled::new(&plan.kernels, &lens).map_err(jit)?;
    let mut bufs = engine::allocate(&Layout::unshared(&lens), batch)
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    fill_buffers(&plan, graph, batch, values, &mut bufs);

    let mut train_schedule = plan.train_forward.clone();
    train_schedule.push(plan.loss);
    train_schedule.extend(&plan.backward);
    let mut per_kernel = |schedule: &[usize]| -> Result<Vec<Option<f64>>, Failure> {
        let mut total = vec![0.0; plan.kernels.len()];
        let mut runs = 0usize;
        let start = Instant::now();
        while runs < MIN_ITERATIONS + WARMUP_ITERATIONS
            || start.elapsed().as_secs_f64() < MEASURE_SECONDS
        {
            for &k in schedule {
                let clock = Instant::now();
                compiled.run(k, &mut bufs, threads).map_err(jit)?;
                if runs >= WARMUP_ITERATIONS {
                    total[k] += clock.elapsed().as_secs_f64();
                }
            }
            runs += 1;
        }
        let timed = (runs - WARMUP_ITERATIONS) as f64;
        Ok((0..plan.kernels.len())
            .map(|k| schedule.contains(&k).then(|| total[k] / timed))
            .collect())
    };
    let infer = per_kernel(&plan.infer)?;
    let train = per_kernel(&train_schedule)?;
    Ok(plan
        .kernels
        .iter()
        .enumerate()
        .map(|(k, kernel)| {
            let (layer, role) = kernel.name.rsplit_once('.').unwrap_or((&kernel.name, ""));
            KernelTime {
                layer: layer.to_string(),
                kernel: kernel.name.clone(),
                infer_seconds: infer[k],
                train_seconds: train[k],
                flops: kernel_flops(graph, layer, role, batch),
            }
        })
        .collect())
}

/// Parameters, a deterministic input, labels `i mod classes` (or zero targets), and dropout
/// masks of ones: the values a timed step needs so that no kernel sees garbage.
fn fill_buffers(plan: &Plan, graph: &Graph, batch: usize, values: &[Vec<f32>], bufs: &mut Buffers) {
    let classes = graph.output_shape().numel().max(1);
    for (i, decl) in plan.buffers.iter().enumerate() {
        let buf = bufs.get_mut(crate::lower::loops::BufId(i as u32));
        match decl.role {
            BufferRole::Param(id) => buf.copy_from_slice(&values[id.0 as usize]),
            BufferRole::Input => buf.copy_from_slice(&sample_input(graph, batch)),
            BufferRole::Labels => {
                for (j, label) in buf.iter_mut().enumerate() {
                    *label = (j % classes) as f32;
                }
            }
            BufferRole::Mask(_) => buf.fill(1.0),
            BufferRole::Target
            | BufferRole::Value(_)
            | BufferRole::Grad(_)
            | BufferRole::ParamGrad(_)
            | BufferRole::Loss
            | BufferRole::Saved(..)
            | BufferRole::Scratch(..) => {}
        }
    }
}

/// Kernels grouped under their layer (plan order of first appearance), with totals per layer.
fn layers_text(kernels: &[KernelTime]) -> String {
    let ms = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{:.3}", s * 1e3));
    let mut order: Vec<&str> = Vec::new();
    for k in kernels {
        if !order.contains(&k.layer.as_str()) {
            order.push(&k.layer);
        }
    }
    let mut out = format!(
        "\nper kernel (each timed alone, ms per run; GFLOP/s of the training run)\n{:<44}{:>11}{:>11}{:>10}\n",
        "layer / kernel", "infer ms", "train ms", "GFLOP/s"
    );
    for layer in order {
        let members: Vec<&KernelTime> = kernels.iter().filter(|k| k.layer == layer).collect();
        let sum = |pick: fn(&KernelTime) -> Option<f64>| {
            let times: Vec<f64> = members.iter().filter_map(|k| pick(k)).collect();
            (!times.is_empty()).then(|| times.iter().sum())
        };
        out += &format!(
            "{layer:<44}{:>11}{:>11}\n",
            ms(sum(|k| k.infer_seconds)),
            ms(sum(|k| k.train_seconds))
        );
        for k in members {
            let gflops = k.gflops().map_or(String::new(), |g| format!("{g:.2}"));
            out += &format!(
                "  {:<42}{:>11}{:>11}{:>10}\n",
                k.kernel,
                ms(k.infer_seconds),
                ms(k.train_seconds),
                gflops
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(peak: PeakFigure) -> Figures<'static> {
        Figures {
            network: "net",
            batch: 4,
            threads: 2,
            optimizer: "sgd",
            compile_seconds: 0.01,
            infer_seconds: 0.001,
            train_seconds: 0.004,
            infer_gflops: 10.0,
            train_gflops: 30.0,
            peak,
            buffer_bytes: 1024,
            unshared_buffer_bytes: 2048,
            optimizer_bytes: 0,
            macs_per_image: 100,
        }
    }

    #[test]
    fn the_fraction_is_of_the_given_or_measured_peak_and_absent_without_one() {
        let json = |peak| -> serde_json::Value {
            serde_json::from_str(&figures(peak).json(None)).expect("valid JSON")
        };
        let given = json(PeakFigure::Given(120.0));
        assert_eq!(given["peak_source"], "given");
        assert_eq!(given["peak_gflops"], 120.0);
        assert_eq!(given["peak_fraction"]["train"], 0.25);
        let measured = json(PeakFigure::Measured(Peak {
            gflops: 300.0,
            lanes: 16,
            f32x4_gflops: 75.0,
            threads: 2,
        }));
        assert_eq!(measured["peak_source"], "measured");
        assert_eq!(
            measured["peak_fraction"]["infer"].as_f64(),
            Some(10.0 / 300.0)
        );
        assert_eq!(
            (
                measured["peak_lanes"].clone(),
                measured["f32x4_peak_gflops"].clone()
            ),
            (16.into(), 75.0.into())
        );
        let unknown = json(PeakFigure::Unknown);
        assert_eq!(unknown["peak_source"], "unknown");
        assert!(unknown["peak_gflops"].is_null() && unknown["peak_fraction"].is_null());

        let text = figures(PeakFigure::Unknown).text(None);
        assert!(
            text.contains("peak unknown on this CPU (give it with --peak)"),
            "{text}"
        );
        let text = figures(PeakFigure::Given(120.0)).text(None);
        assert!(
            text.contains("25.0%") && text.contains("peak 120 GFLOP/s (given)"),
            "{text}"
        );
    }
}

//! A network compiled for one batch size: the plan's kernels JIT-compiled, every buffer
//! allocated once in one workspace whose activations and gradients share memory where their
//! live ranges allow (`lower::memory`), and the operations the commands and the training loop
//! need. The engine itself touches only persistent buffers (input, labels or target, masks,
//! parameters and their gradients, loss, output), which the memory plan never shares.
//!
//! The engine holds the parameters while it runs (in the plan's `Param` buffers); the training
//! loop hands them between engines of different batch sizes (an epoch's last, partial batch)
//! with [`Engine::params`] and [`Engine::set_params`]. Nothing is allocated per step.
//!
//! Kernels that compute only from parameters (weight packing, `Plan::derived`) run in
//! inference only when a parameter may have changed since they last ran: every path that
//! writes parameters ([`Engine::set_params`], [`Engine::update`], and a training step, whose
//! forward pass updates batchnorm running statistics and which may reuse the packed copies'
//! memory once it has read them) marks them stale, and running one in inference clears its
//! mark. Training runs them in every step (so once per step, after the update). Only a kernel
//! whose outputs keep their memory over inference (`lower::memory::kept_over`: the memory plan
//! holds them there when its budget allows) is ever skipped, so its results are still there.
//!
//! The engine lowers the graph after `passes::fuse` (same nodes, names and parameters, so
//! nothing outside it can tell), unless built with [`Fusion::Off`] to measure the difference.

use std::fmt;

use rand::RngExt;

use crate::ir::{Graph, Loss, NodeId, Op, ParamId};
use crate::jit::{Buffers, Compiled, JitError};
use crate::limits::MAX_BATCH;
use crate::lower::loops::{visit_uses, BufId, Use};
use crate::lower::memory::{self, Layout};
use crate::lower::step::{plan, BufferRole, Plan};
use crate::runtime::optim::Optimizer;

/// What a training step is compared against: class indices (cross-entropy) or target values of
/// the output's shape (mean squared error), one per sample of the batch.
#[derive(Clone, Copy, Debug)]
pub enum Truth<'a> {
    Classes(&'a [u32]),
    Targets(&'a [f32]),
}

/// A compile failure, a batch whose workspace does not fit, or data of the wrong size for the
/// plan.
#[derive(Debug)]
pub enum EngineError {
    Jit(JitError),
    /// A batch above [`MAX_BATCH`].
    Batch(usize),
    /// A workspace of `bytes` for `batch` samples: more than the `memory` available (when
    /// known), or more than the allocator could give.
    Memory {
        batch: usize,
        bytes: usize,
        memory: Option<u64>,
    },
    /// Values handed in whose count is not what the plan needs.
    WrongLength {
        what: String,
        expected: usize,
        found: usize,
    },
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Jit(e) => write!(f, "code generation failed: {e}"),
            EngineError::Batch(batch) => {
                write!(f, "a batch of {batch} is above cnnc's limit of {MAX_BATCH}")
            }
            EngineError::Memory {
                batch,
                bytes,
                memory,
            } => {
                let gib = |b: f64| b / f64::from(1 << 30);
                write!(
                    f,
                    "the workspace for a batch of {batch} needs {:.1} GiB, ",
                    gib(*bytes as f64)
                )?;
                match memory {
                    Some(m) if *bytes as u64 > *m => write!(
                        f,
                        "more than the {:.1} GiB of memory available",
                        gib(*m as f64)
                    )?,
                    _ => write!(f, "more than could be allocated")?,
                }
                write!(f, ": use a smaller batch")
            }
            EngineError::WrongLength {
                what,
                expected,
                found,
            } => {
                write!(
                    f,
                    "{what} has {found} values where the network needs {expected}"
                )
            }
        }
    }
}

impl std::error::Error for EngineError {}

impl From<JitError> for EngineError {
    fn from(e: JitError) -> Self {
        EngineError::Jit(e)
    }
}

/// The zeroed workspace of `layout`, for `batch` samples; an error (not an abort, nor the
/// system's out-of-memory killer later) when it is larger than the memory available or the
/// allocator refuses it.
pub fn allocate(layout: &Layout, batch: usize) -> Result<Buffers, EngineError> {
    let bytes = layout.bytes();
    let memory = machine_memory();
    let too_big = EngineError::Memory {
        batch,
        bytes,
        memory,
    };
    if memory.is_some_and(|m| bytes as u64 > m) {
        return Err(too_big);
    }
    Buffers::try_with_layout(layout).ok_or(too_big)
}

/// The memory available for a new workspace in bytes (`MemAvailable` of `/proc/meminfo`: free
/// memory and what the system can reclaim without swapping), where the system says.
fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Whether an engine lowers the graph after the fusion passes (the default) or as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fusion {
    #[default]
    On,
    Off,
}

impl Fusion {
    /// The graph an engine lowers: `graph` after the fusion passes, or `graph` itself.
    pub fn apply(self, graph: &Graph) -> std::borrow::Cow<'_, Graph> {
        match self {
            Fusion::On => std::borrow::Cow::Owned(crate::passes::fuse(graph)),
            Fusion::Off => std::borrow::Cow::Borrowed(graph),
        }
    }
}

pub struct Engine {
    plan: Plan,
    compiled: Compiled,
    bufs: Buffers,
    threads: usize,
    /// Each dropout node's mask buffer and drop probability.
    dropouts: Vec<(BufId, f32)>,
    /// `Param` and `ParamGrad` buffer of each parameter, `Graph::params` order.
    params: Vec<(BufId, Option<BufId>)>,
    names: Vec<String>,
    /// Bytes the buffers would take if none shared memory.
    unshared_bytes: usize,
    input: BufId,
    output: BufId,
    loss: BufId,
    truth: BufId,
    /// By kernel index: whether it computes only from parameters (`Plan::derived`).
    derived: Vec<bool>,
    /// By kernel index: a derived kernel whose outputs keep their memory over inference
    /// (`memory::kept_over`), which inference may therefore skip.
    skippable: Vec<bool>,
    /// By kernel index: whether a derived kernel's outputs may be out of date (a parameter may
    /// have been written, or its memory reused, since it last ran). Starts all true.
    stale: Vec<bool>,
    /// By kernel index: whether it writes a parameter buffer (batchnorm running statistics).
    writes_params: Vec<bool>,
    /// How many times a derived kernel has run (for tests of the skipping).
    derived_runs: usize,
}

impl Engine {
    /// Fuses, lowers and compiles `graph` for batches of `batch` samples trained with `loss`;
    /// kernels run on `threads` threads.
    pub fn new(
        graph: &Graph,
        batch: usize,
        loss: Loss,
        threads: usize,
    ) -> Result<Engine, EngineError> {
        Engine::with_options(graph, batch, loss, threads, Fusion::On, Memory::Planned)
    }

    /// [`Engine::new`] with the fusion passes on or off, and the buffers' memory shared as
    /// planned or each buffer apart (to measure what each one brings).
    pub fn with_options(
        graph: &Graph,
        batch: usize,
        loss: Loss,
        threads: usize,
        fusion: Fusion,
        sharing: Memory,
    ) -> Result<Engine, EngineError> {
        if batch > MAX_BATCH {
            return Err(EngineError::Batch(batch));
        }
        let graph = &*fusion.apply(graph);
        let plan = plan(graph, batch, loss);
        let lens: Vec<usize> = plan.buffers.iter().map(|b| b.len).collect();
        let compiled = Compiled::new(&plan.kernels, &lens)?;
        let role = |r: BufferRole| {
            plan.buffer(r)
                .expect("the plan has a buffer for every role it lowers")
        };
        let dropouts = graph
            .node_ids()
            .filter_map(|id: NodeId| match graph.node(id).op {
                Op::Dropout { p } => Some((role(BufferRole::Mask(id)), p)),
                _ => None,
            })
            .collect();
        let params = (0..graph.params.len() as u32)
            .map(ParamId)
            .map(|id| {
                (
                    role(BufferRole::Param(id)),
                    plan.buffer(BufferRole::ParamGrad(id)),
                )
            })
            .collect();
        let truth = match loss {
            Loss::CrossEntropy => role(BufferRole::Labels),
            Loss::Mse => role(BufferRole::Target),
        };
        let output = role(BufferRole::Value(graph.output));
        let writes_params = plan
            .kernels
            .iter()
            .map(|kernel| {
                let mut writes = false;
                visit_uses(&kernel.body, &mut |item| {
                    if let Use::Store(b) | Use::Accumulate(b) = item {
                        writes |= matches!(plan.buffers[b.0 as usize].role, BufferRole::Param(_));
                    }
                });
                writes
            })
            .collect();
        let unshared = Layout::unshared(&lens);
        let layout = match sharing {
            Memory::Planned => memory::layout(&plan, &[output]),
            Memory::Unshared => unshared.clone(),
        };
        let bufs = allocate(&layout, batch)?;
        // A derived kernel may be skipped in inference when its outputs keep their memory
        // from one inference to the next.
        let mut derived = vec![false; plan.kernels.len()];
        let mut skippable = vec![false; plan.kernels.len()];
        for &k in &plan.derived {
            derived[k] = true;
            let mut kept = true;
            visit_uses(&plan.kernels[k].body, &mut |item| {
                if let Use::Store(b) | Use::Accumulate(b) = item {
                    kept &= memory::kept_over(&layout, &plan.kernels, &plan.infer, b);
                }
            });
            skippable[k] = kept;
        }
        Ok(Engine {
            input: role(BufferRole::Input),
            output,
            loss: role(BufferRole::Loss),
            truth,
            dropouts,
            params,
            names: graph.params.iter().map(|p| p.name.clone()).collect(),
            bufs,
            unshared_bytes: unshared.bytes(),
            stale: vec![true; plan.kernels.len()],
            derived,
            skippable,
            writes_params,
            derived_runs: 0,
            plan,
            compiled,
            threads: threads.max(1),
        })
    }

    pub fn batch(&self) -> usize {
        self.plan.batch
    }

    pub fn compile_seconds(&self) -> f64 {
        self.compiled.compile_seconds()
    }

    /// Bytes of the workspace: every buffer (activations, gradients, parameters; no optimiser
    /// state), memory shared between buffers counted once.
    pub fn buffer_bytes(&self) -> usize {
        self.bufs.bytes()
    }

    /// What [`Engine::buffer_bytes`] would be if no two buffers shared memory.
    pub fn unshared_buffer_bytes(&self) -> usize {
        self.unshared_bytes
    }

    /// Copies parameter values in, `Graph::params` order; every length is checked.
    pub fn set_params<V: AsRef<[f32]>>(&mut self, values: &[V]) -> Result<(), EngineError> {
        self.params_changed();
        if values.len() != self.params.len() {
            return Err(EngineError::WrongLength {
                what: "the parameter list".into(),
                expected: self.params.len(),
                found: values.len(),
            });
        }
        for (i, value) in values.iter().enumerate() {
            let what = format!("parameter `{}`", self.names[i]);
            self.fill(self.params[i].0, value.as_ref(), &what)?;
        }
        Ok(())
    }

    /// The current parameter values, `Graph::params` order.
    pub fn params(&self) -> Vec<&[f32]> {
        self.params.iter().map(|&(p, _)| self.bufs.get(p)).collect()
    }

    /// The gradient of each parameter after [`Engine::train_step`] (`None` for buffers such as
    /// batchnorm running statistics, and for parameters no loss reaches).
    pub fn grads(&self) -> Vec<Option<&[f32]>> {
        self.params
            .iter()
            .map(|&(_, g)| g.map(|g| self.bufs.get(g)))
            .collect()
    }

    /// The network's output for the last batch run, `[batch, *output]`.
    pub fn output(&self) -> &[f32] {
        self.bufs.get(self.output)
    }

    /// Inference (dropout off, batchnorm running statistics) on a full batch of inputs.
    pub fn infer(&mut self, input: &[f32]) -> Result<&[f32], EngineError> {
        self.fill(self.input, input, "the input batch")?;
        self.run_schedule(Schedule::Infer)?;
        Ok(self.output())
    }

    /// Training forward (dropout masks drawn from `rng`, batchnorm batch statistics and running
    /// update), the loss and the backward pass. Returns the mean loss; parameter gradients are
    /// then in [`Engine::grads`] and the output in [`Engine::output`].
    pub fn train_step(
        &mut self,
        input: &[f32],
        truth: Truth,
        rng: &mut impl RngExt,
    ) -> Result<f32, EngineError> {
        self.fill(self.input, input, "the input batch")?;
        match truth {
            Truth::Classes(classes) => {
                let labels = self.bufs.get_mut(self.truth);
                if labels.len() != classes.len() {
                    return Err(EngineError::WrongLength {
                        what: "the label batch".into(),
                        expected: labels.len(),
                        found: classes.len(),
                    });
                }
                // Class indices are exact in f32 below 2^24; the data loader checks the range.
                for (dst, &c) in labels.iter_mut().zip(classes) {
                    *dst = c as f32;
                }
            }
            Truth::Targets(targets) => self.fill(self.truth, targets, "the target batch")?,
        }
        for &(mask, p) in &self.dropouts {
            let keep = 1.0 / (1.0 - p);
            for m in self.bufs.get_mut(mask) {
                *m = if rng.random::<f32>() < p { 0.0 } else { keep };
            }
        }
        self.run_schedule(Schedule::Train)?;
        let losses = self.bufs.get(self.loss);
        // Summed in f64 in sample order: the same value for every thread count.
        Ok((losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64) as f32)
    }

    /// One optimiser step on the gradients of the last [`Engine::train_step`], parameter by
    /// parameter in place (nothing allocated).
    pub fn update(&mut self, optimizer: &mut Optimizer) {
        self.params_changed();
        optimizer.begin_step();
        for (i, &(param, grad)) in self.params.iter().enumerate() {
            // Parameters and gradients are persistent: never sharing memory.
            if let Some(grad) = grad {
                let (param, grad) = self.bufs.pair_mut(param, grad);
                optimizer.step_param(i, param, grad);
            }
        }
    }

    /// Marks every parameter-only kernel stale: a parameter may have been written, or their
    /// outputs' memory reused.
    fn params_changed(&mut self) {
        self.stale.fill(true);
    }

    /// How many times a parameter-only kernel (weight packing) has run.
    pub fn derived_runs(&self) -> usize {
        self.derived_runs
    }

    fn run_schedule(&mut self, schedule: Schedule) -> Result<(), EngineError> {
        let kernels: &[usize] = match schedule {
            Schedule::Infer => &self.plan.infer,
            Schedule::Train => {
                // Training reruns every kernel, and afterwards the derived kernels' outputs
                // may have lost their memory to others (or batchnorm written its running
                // statistics): marked stale first, so that an error half-way leaves them so.
                self.stale.fill(true);
                &self.plan.train_forward
            }
        };
        for &k in kernels {
            if self.derived[k] {
                if matches!(schedule, Schedule::Infer) && self.skippable[k] && !self.stale[k] {
                    continue;
                }
                self.derived_runs += 1;
            }
            self.compiled.run(k, &mut self.bufs, self.threads)?;
            if matches!(schedule, Schedule::Infer) {
                if self.writes_params[k] {
                    self.stale.fill(true);
                }
                if self.derived[k] {
                    self.stale[k] = false;
                }
            }
        }
        if let Schedule::Train = schedule {
            self.compiled
                .run(self.plan.loss, &mut self.bufs, self.threads)?;
            for &k in &self.plan.backward {
                self.derived_runs += usize::from(self.derived[k]);
                self.compiled.run(k, &mut self.bufs, self.threads)?;
            }
        }
        Ok(())
    }

    fn fill(&mut self, buf: BufId, values: &[f32], what: &str) -> Result<(), EngineError> {
        let dst = self.bufs.get_mut(buf);
        if dst.len() != values.len() {
            return Err(EngineError::WrongLength {
                what: what.into(),
                expected: dst.len(),
                found: values.len(),
            });
        }
        dst.copy_from_slice(values);
        Ok(())
    }
}

/// Whether buffers share memory: `Planned` by liveness (`lower::memory`), or `Unshared`, every
/// buffer apart (to check that sharing changes nothing, and to measure what it saves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    Planned,
    Unshared,
}

#[derive(Clone, Copy)]
enum Schedule {
    Infer,
    Train,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Init;
    use crate::reference::{self, Mode};
    use crate::runtime::{init::initialize, rng, Stream};
    use crate::span::SourceMap;
    use ndarray::{ArrayD, IxDyn};

    fn lenet() -> Graph {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lenet.cnn");
        crate::load_file(&path, &mut SourceMap::default())
            .expect("lenet checks")
            .remove(0)
    }

    /// A batch above the limit, and one whose workspace (about 1 TiB for LeNet at 16 million
    /// images) no machine running the tests has: errors that say so, not aborts.
    #[test]
    fn absurd_batches_are_errors() {
        let graph = lenet();
        let error = |batch| match Engine::new(&graph, batch, Loss::CrossEntropy, 1) {
            Ok(_) => panic!("a batch of {batch} compiled"),
            Err(e) => e,
        };
        let over = error(crate::limits::MAX_BATCH + 1);
        assert!(matches!(over, EngineError::Batch(_)), "{over}");
        assert!(over.to_string().contains("limit of 16777216"), "{over}");
        let huge = error(16_000_000);
        let EngineError::Memory { bytes, .. } = huge else {
            panic!("{huge}")
        };
        assert!(bytes > 1 << 39, "{huge}");
        let text = huge.to_string();
        assert!(
            text.contains("a batch of 16000000 needs") && text.ends_with("use a smaller batch"),
            "{text}"
        );
    }

    /// The engine's training step (JIT) agrees with the reference forward, loss and backward.
    #[test]
    fn train_step_matches_reference() {
        let graph = lenet();
        let batch = 5;
        let values = initialize(&graph, Init::Xavier, 3);
        let mut engine = Engine::new(&graph, batch, Loss::CrossEntropy, 2).unwrap();
        engine.set_params(&values).unwrap();
        let sample = graph.input().shape.numel();
        let input: Vec<f32> = (0..batch * sample)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect();
        let labels: Vec<u32> = (0..batch as u32).map(|i| (i * 3) % 10).collect();
        let loss = engine
            .train_step(&input, Truth::Classes(&labels), &mut rng(0, Stream::Init))
            .unwrap();

        let mut shape = vec![batch];
        shape.extend(&graph.input().shape.0);
        let x = ArrayD::from_shape_vec(IxDyn(&shape), input).unwrap();
        let mut params: Vec<ArrayD<f32>> = graph
            .params
            .iter()
            .zip(&values)
            .map(|(p, v)| ArrayD::from_shape_vec(IxDyn(&p.shape), v.clone()).unwrap())
            .collect();
        let masks = vec![None; graph.nodes.len()];
        let acts = reference::forward(&graph, &mut params, &x, Mode::Train, &masks);
        let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
        let (ref_loss, grad) =
            reference::loss::cross_entropy(&acts[graph.output.0 as usize], &labels);
        let grads = reference::backward(&graph, &params, &acts, &masks, grad);
        assert!(
            (loss - ref_loss).abs() <= 1e-5 * ref_loss.abs().max(1.0),
            "{loss} vs {ref_loss}"
        );
        for ((p, jit), reference) in graph.params.iter().zip(engine.grads()).zip(&grads.params) {
            let (jit, reference) = (jit.unwrap(), reference.as_ref().unwrap());
            for (a, b) in jit.iter().zip(reference.iter()) {
                assert!(
                    (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
                    "{}: {a} vs {b}",
                    p.name
                );
            }
        }
    }

    /// Two training steps with an update between and after, then an inference, on `graph` at
    /// `batch`: once with planned memory whose shared buffers start as NaN (so a kernel reading
    /// memory another buffer left behind would show), once with every buffer apart. Losses and
    /// every buffer the planner keeps apart (output, parameters, gradients, ...) must be
    /// bitwise equal.
    fn check_sharing_changes_nothing(graph: &Graph, batch: usize) {
        let config = graph.train.clone().unwrap_or_default();
        let values = initialize(graph, Init::PyTorch, 5);
        // One compiled engine, run over both tables (compiling twice would double the cost).
        let mut engine = Engine::new(graph, batch, config.loss, 2).unwrap();
        let layout = memory::layout(&engine.plan, &[engine.output]);
        assert_eq!(
            engine.buffer_bytes(),
            layout.bytes(),
            "the engine's table is planned"
        );
        assert!(engine.buffer_bytes() <= engine.unshared_buffer_bytes());
        let lens = engine.bufs.lens();
        let input: Vec<f32> = (0..batch * graph.input().shape.numel())
            .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
            .collect();
        let outputs = graph.node(graph.output).shape.numel();
        let classes: Vec<u32> = (0..batch as u32).map(|i| i % outputs as u32).collect();
        let targets: Vec<f32> = (0..batch * outputs).map(|i| (i % 3) as f32 - 1.0).collect();
        let truth = match config.loss {
            Loss::CrossEntropy => Truth::Classes(&classes),
            Loss::Mse => Truth::Targets(&targets),
        };
        let mut runs = Vec::new();
        for shared in [true, false] {
            engine.bufs = match shared {
                true => Buffers::with_layout(&layout),
                false => Buffers::new(&lens),
            };
            engine.set_params(&values).unwrap();
            for b in (0..lens.len()).filter(|&b| shared && layout.shared[b]) {
                engine.bufs.get_mut(BufId(b as u32)).fill(f32::NAN);
            }
            let mut optimizer = Optimizer::new(&config.optimizer, &graph.params);
            let mut rng = rng(1, Stream::Init);
            let mut losses = Vec::new();
            for _ in 0..2 {
                let loss = engine.train_step(&input, truth, &mut rng).unwrap();
                losses.push(loss.to_bits());
                engine.update(&mut optimizer);
            }
            // Inference packs the updated weights; a second one reuses them, to the bit.
            let mut infer_bits = || -> Vec<u32> {
                let output = engine.infer(&input).unwrap();
                output.iter().map(|v| v.to_bits()).collect()
            };
            let (first, again) = (infer_bits(), infer_bits());
            assert_eq!(first, again, "{}: repeated inference", graph.name);
            // A training step without an update (it may reuse the packed copies' memory, and
            // batchnorm updates its running statistics), then inference again.
            let loss = engine.train_step(&input, truth, &mut rng).unwrap();
            losses.push(loss.to_bits());
            engine.infer(&input).unwrap();
            // Every buffer the planner keeps apart: output, parameters, gradients, loss, ...
            let kept: Vec<(String, Vec<u32>)> = (0..lens.len())
                .filter(|&b| !layout.shared[b])
                .map(|b| {
                    let values = engine.bufs.get(BufId(b as u32));
                    let name = engine.plan.buffers[b].name.clone();
                    (name, values.iter().map(|v| v.to_bits()).collect())
                })
                .collect();
            runs.push((losses, kept));
        }
        assert_eq!(runs[0].0, runs[1].0, "{}: losses", graph.name);
        for (planned, unshared) in runs[0].1.iter().zip(&runs[1].1) {
            assert!(
                planned == unshared,
                "{}: buffer `{}` differs with shared memory",
                graph.name,
                planned.0
            );
        }
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// A batchnorm folded into its conv for inference (`passes::fold`): its folding and the
    /// packing of the folded weights are both parameter-only kernels (the second reads what the
    /// first wrote); inference after a training step, which moves the running statistics,
    /// equals bitwise a fresh engine given the new statistics, and repeats bitwise.
    #[test]
    fn folded_batchnorm_weights_follow_the_running_statistics() {
        use crate::reference::fixtures::{plain_conv, GraphBuilder};
        let mut b = GraphBuilder::new(&[3, 6, 6]);
        let c = b.conv("conv1", NodeId(0), plain_conv(3, 8, 3, 2), &[8, 4, 4]);
        let n = b.batchnorm("batchnorm1", c, &[8, 4, 4]);
        let f = b.node("flatten", Op::Flatten, &[n], &[128]);
        b.dense("dense1", f, 128, 3);
        let graph = b.graph;
        let batch = 2;
        let mut engine = Engine::new(&graph, batch, Loss::CrossEntropy, 2).unwrap();
        let derived: Vec<&str> = engine
            .plan
            .derived
            .iter()
            .map(|&k| engine.plan.kernels[k].name.as_str())
            .collect();
        assert!(derived.contains(&"conv1.fold_batchnorm"), "{derived:?}");
        assert!(derived.contains(&"conv1.pack_weight_folded"), "{derived:?}");
        let input: Vec<f32> = (0..batch * 108).map(|i| (i % 17) as f32 / 17.0).collect();
        engine
            .set_params(&initialize(&graph, Init::PyTorch, 1))
            .unwrap();
        let before = bits(engine.infer(&input).unwrap());
        let mut rng = rng(0, Stream::Init);
        engine
            .train_step(&input, Truth::Classes(&[0, 2]), &mut rng)
            .unwrap();
        let after = bits(engine.infer(&input).unwrap());
        assert_ne!(before, after, "the running statistics moved");
        assert_eq!(
            bits(engine.infer(&input).unwrap()),
            after,
            "repeated inference"
        );
        let params: Vec<Vec<f32>> = engine.params().iter().map(|p| p.to_vec()).collect();
        let mut fresh = Engine::new(&graph, batch, Loss::CrossEntropy, 2).unwrap();
        fresh.set_params(&params).unwrap();
        assert_eq!(bits(fresh.infer(&input).unwrap()), after);
    }

    /// Repeated inference packs the weights once and gives bitwise the same output; after a
    /// parameter changes (new values, an optimiser update) the next inference packs them again
    /// and equals, bitwise, a fresh engine's on the new parameters.
    #[test]
    fn weights_are_packed_again_only_after_parameters_change() {
        let graph = lenet();
        let batch = 3;
        let config = graph.train.clone().unwrap_or_default();
        let input: Vec<f32> = (0..batch * graph.input().shape.numel())
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect();
        let labels = [1, 7, 3];
        let fresh = |values: &[Vec<f32>]| {
            let mut engine = Engine::new(&graph, batch, Loss::CrossEntropy, 2).unwrap();
            engine.set_params(values).unwrap();
            bits(engine.infer(&input).unwrap())
        };
        let (first, second) = (
            initialize(&graph, Init::Xavier, 3),
            initialize(&graph, Init::Xavier, 4),
        );
        let mut engine = Engine::new(&graph, batch, Loss::CrossEntropy, 2).unwrap();
        let packers = engine
            .plan
            .infer
            .iter()
            .filter(|&&k| engine.derived[k])
            .count();
        assert!(
            packers >= 4,
            "conv2 and the dense layers pack weights: {packers}"
        );
        // LeNet's packed weights fit in its arena's budget: every one is kept over inference.
        assert!((0..engine.derived.len())
            .all(|k| engine.skippable[k] == engine.derived[k] || !engine.plan.infer.contains(&k)));

        engine.set_params(&first).unwrap();
        let a = bits(engine.infer(&input).unwrap());
        assert_eq!(engine.derived_runs(), packers);
        assert_eq!(bits(engine.infer(&input).unwrap()), a, "repeated inference");
        assert_eq!(
            engine.derived_runs(),
            packers,
            "unchanged weights are not packed again"
        );
        assert_eq!(a, fresh(&first));

        engine.set_params(&second).unwrap();
        let b = bits(engine.infer(&input).unwrap());
        assert_eq!(engine.derived_runs(), 2 * packers);
        assert_ne!(a, b);
        assert_eq!(
            b,
            fresh(&second),
            "inference after set_params uses the new weights"
        );

        let mut optimizer = Optimizer::new(&config.optimizer, &graph.params);
        let mut rng = rng(0, Stream::Init);
        engine
            .train_step(&input, Truth::Classes(&labels), &mut rng)
            .unwrap();
        engine.update(&mut optimizer);
        let c = bits(engine.infer(&input).unwrap());
        let updated: Vec<Vec<f32>> = engine.params().iter().map(|p| p.to_vec()).collect();
        assert_ne!(b, c);
        assert_eq!(
            c,
            fresh(&updated),
            "inference after an update uses the new weights"
        );

        // A training step without an update changes no parameter of LeNet (no batchnorm).
        engine
            .train_step(&input, Truth::Classes(&labels), &mut rng)
            .unwrap();
        assert_eq!(bits(engine.infer(&input).unwrap()), c);
    }

    #[test]
    fn shared_memory_changes_nothing_on_every_model() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
            .collect();
        files.sort();
        assert!(files.len() >= 10, "models/ has its networks");
        for file in files {
            for graph in crate::load_file(&file, &mut SourceMap::default()).unwrap() {
                check_sharing_changes_nothing(&graph, 2);
            }
        }
    }

    /// Small random sequential networks: convs, pools, activations, batchnorm and dropout in
    /// random order and sizes, then a dense head.
    #[test]
    fn shared_memory_changes_nothing_on_random_small_nets() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut below = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..12 {
            let (channels, size) = (1 + below(3), 6 + below(5));
            let mut text = format!("network random {{ input [{channels}, {size}, {size}]\n");
            let mut spatial = size;
            for _ in 0..3 + below(5) {
                let layer = match below(7) {
                    0 | 1 => format!("conv {} kernel=3 padding=1", 1 + below(4)),
                    2 if spatial >= 4 => {
                        spatial /= 2;
                        ["maxpool kernel=2", "avgpool kernel=2"][below(2) as usize].into()
                    }
                    3 => "batchnorm".into(),
                    4 => "dropout 0.3".into(),
                    _ => ["relu", "sigmoid", "tanh"][below(3) as usize].into(),
                };
                text.push_str(&layer);
                text.push('\n');
            }
            text.push_str("flatten; dense 5; relu; dense 3 }");
            let graph = crate::load_str("random.cnn", &text, &mut SourceMap::default())
                .unwrap_or_else(|e| panic!("{text}: {e:?}"))
                .remove(0);
            check_sharing_changes_nothing(&graph, 1 + below(3) as usize);
        }
    }
}

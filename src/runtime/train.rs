//! The training loop of `cnnc run`, as d2l's `train_ch6`: per epoch, shuffled minibatches
//! (the last, partial one kept), a training step and an optimiser step per batch, then the
//! test accuracy in inference mode. The learning rate of each epoch comes from the
//! configuration's schedule ([`crate::runtime::schedule`]).
//!
//! A run is a function of its settings and `(seed, step)`: the sample order of epoch `e` is
//! drawn from [`Stream::Shuffle`] and the dropout masks of step `s` from [`Stream::Dropout`],
//! so a run resumed from the checkpoint of epoch `e` continues exactly as the uninterrupted run
//! would, on any thread count (kernels split over threads sum every output in the same order).
//!
//! Checkpoints (`save`) are written atomically when the run starts and after every epoch, so
//! an interruption (Ctrl-C sets the `stop` flag, checked between batches) or a non-finite loss
//! loses at most the epoch in progress. Nothing here prints: the caller sees the run through
//! [`Event`]s.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::ir::train::check_schedule;
use crate::ir::{DataSource, Graph, Optimizer as OptimizerConfig, Schedule, TrainConfig};
use crate::runtime::checkpoint::{self, Checkpoint, CheckpointError, Progress};
use crate::runtime::data::{epoch_order, Batch, Dataset, Labels, Splits};
use crate::runtime::engine::{EngineError, Truth};
use crate::runtime::engines::Engines;
use crate::runtime::eval::{argmax, evaluate, Evaluation};
use crate::runtime::init::initialize;
use crate::runtime::optim::Optimizer;
use crate::runtime::report::EpochRecord;
use crate::runtime::schedule::lr_at;
use crate::runtime::{rng, Stream};

/// Which optimiser `--optimizer` asks for; its other hyper-parameters are PyTorch's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

/// Command-line settings that override the network's `train` section.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub data: Option<DataSource>,
    pub epochs: Option<usize>,
    pub batch: Option<usize>,
    pub lr: Option<f32>,
    pub optimizer: Option<OptimizerKind>,
    /// SGD's momentum (an error with Adam).
    pub momentum: Option<f32>,
    pub weight_decay: Option<f32>,
    pub schedule: Option<Schedule>,
    pub seed: Option<u64>,
}

/// The network's `train` section (or the defaults) with `overrides` applied. An optimiser of
/// another kind than the section's starts from PyTorch's defaults (SGD without momentum,
/// Adam's betas and eps); `lr` then replaces the learning rate, which for SGD has no PyTorch
/// default and is taken from the section (or 0.1); `momentum` and `weight_decay` replace
/// theirs. The values the flags bring are checked as the section's are (an error names the
/// flag), and so is the schedule against the resulting learning rate.
pub fn settings(
    section: Option<&TrainConfig>,
    overrides: &Overrides,
) -> Result<TrainConfig, String> {
    let mut config = section.cloned().unwrap_or_default();
    if let Some(data) = &overrides.data {
        config.data = data.clone();
    }
    if let Some(epochs) = overrides.epochs {
        config.epochs = epochs;
    }
    if let Some(batch) = overrides.batch {
        if batch == 0 {
            return Err("--batch must be at least 1".to_string());
        }
        config.batch = batch;
    }
    if let Some(seed) = overrides.seed {
        config.seed = seed;
    }
    if let Some(schedule) = overrides.schedule {
        config.schedule = schedule;
    }
    let section_lr = match config.optimizer {
        OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } => lr,
    };
    config.optimizer = match (overrides.optimizer, config.optimizer) {
        (Some(OptimizerKind::Sgd), OptimizerConfig::Adam { .. }) => OptimizerConfig::Sgd {
            lr: section_lr,
            momentum: 0.0,
            weight_decay: 0.0,
        },
        (Some(OptimizerKind::Adam), OptimizerConfig::Sgd { .. }) => OptimizerConfig::Adam {
            lr: 0.001,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        },
        (_, same) => same,
    };
    let check = |flag: &str, value: f32, ok: bool, range: &str| match value.is_finite() && ok {
        true => Ok(value),
        false => Err(format!("--{flag} must be {range}, found {value}")),
    };
    if let Some(new_lr) = overrides.lr {
        let new_lr = check("lr", new_lr, new_lr > 0.0, "positive")?;
        match &mut config.optimizer {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } => *lr = new_lr,
        }
    }
    if let Some(new_momentum) = overrides.momentum {
        let new_momentum = check(
            "momentum",
            new_momentum,
            (0.0..1.0).contains(&new_momentum),
            "at least 0 and below 1",
        )?;
        match &mut config.optimizer {
            OptimizerConfig::Sgd { momentum, .. } => *momentum = new_momentum,
            OptimizerConfig::Adam { .. } => {
                return Err(
                    "--momentum is a setting of sgd; this run uses adam (its betas play that part)"
                        .to_string(),
                )
            }
        }
    }
    if let Some(new_decay) = overrides.weight_decay {
        let new_decay = check("weight-decay", new_decay, new_decay >= 0.0, "zero or more")?;
        match &mut config.optimizer {
            OptimizerConfig::Sgd { weight_decay, .. }
            | OptimizerConfig::Adam { weight_decay, .. } => *weight_decay = new_decay,
        }
    }
    check_schedule(&config)?;
    Ok(config)
}

/// Where a run starts.
pub enum Start {
    /// Weights from `config.init` and `config.seed`, a fresh optimiser, epoch 0.
    Fresh,
    /// A loaded checkpoint. With progress and optimiser state (a cnnc training checkpoint) the
    /// run continues after its last epoch with its seed; plain weights (a converted PyTorch
    /// `state_dict`) start epoch 0 with a fresh optimiser.
    Resume(Checkpoint),
}

/// What the caller is told while the run goes on.
#[derive(Debug)]
pub enum Event<'a> {
    /// Epoch `epoch` (1-based) begins with `batches` batches.
    EpochStart { epoch: usize, batches: usize },
    /// A batch is done: mean loss so far this epoch, training throughput so far.
    Batch {
        running_loss: f64,
        images_per_second: f64,
    },
    /// An epoch is done (and saved, if the run saves).
    EpochEnd(&'a EpochRecord),
}

/// How a run ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every epoch up to `config.epochs` is done (none if the checkpoint was already there).
    Finished,
    /// The stop flag was seen before batch `batch` (1-based) of epoch `epoch`.
    Interrupted { epoch: usize, batch: usize },
}

/// The result of a run: the records of the epochs it completed and the final parameters.
#[derive(Debug)]
pub struct Outcome {
    pub records: Vec<EpochRecord>,
    pub ending: Ending,
    /// Epochs completed in total, counting those before a resume.
    pub epochs_done: usize,
    pub params: Vec<Vec<f32>>,
    pub compile_seconds: f64,
    /// Bytes of the compiled engines' buffers (activations, gradients, parameters).
    pub buffer_bytes: usize,
}

/// Why a run stopped with an error. Each variant says what to do about it.
#[derive(Debug)]
pub enum TrainError {
    Engine(EngineError),
    Checkpoint(CheckpointError),
    /// The checkpoint's optimiser state is not for this run's optimiser.
    Resume(String),
    NoTrainingData,
    ZeroBatch,
    /// The loss of batch `batch` (1-based) of epoch `epoch` was NaN or infinite.
    NonFinite {
        epoch: usize,
        batch: usize,
        loss: f32,
        /// The checkpoint that still holds the last good epoch, if the run saves.
        kept: Option<(PathBuf, usize)>,
    },
}

impl fmt::Display for TrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainError::Engine(e) => write!(f, "{e}"),
            TrainError::Checkpoint(e) => write!(f, "{e}"),
            TrainError::Resume(reason) => write!(f, "cannot resume: {reason}"),
            TrainError::NoTrainingData => f.write_str("the training data has no samples"),
            TrainError::ZeroBatch => f.write_str("the batch size must be at least 1"),
            TrainError::NonFinite {
                epoch,
                batch,
                loss,
                kept,
            } => {
                write!(
                    f,
                    "the loss became {loss} in epoch {epoch}, batch {batch}: training diverged; \
                     try a lower learning rate (--lr)"
                )?;
                match kept {
                    Some((path, done)) => write!(
                        f,
                        "; `{}` keeps the last good state (after epoch {done})",
                        path.display()
                    ),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for TrainError {}

impl From<EngineError> for TrainError {
    fn from(e: EngineError) -> Self {
        TrainError::Engine(e)
    }
}

impl From<CheckpointError> for TrainError {
    fn from(e: CheckpointError) -> Self {
        TrainError::Checkpoint(e)
    }
}

/// What to train and how.
pub struct Run<'a> {
    pub graph: &'a Graph,
    /// See [`settings`].
    pub config: TrainConfig,
    /// Threads the kernels are split over.
    pub threads: usize,
    /// The checkpoint written at the start and after every epoch.
    pub save: Option<PathBuf>,
}

/// Trains `run.graph` on `splits.train` from `start`; `stop` is checked between batches.
pub fn train(
    run: &Run,
    splits: &Splits,
    start: Start,
    stop: &AtomicBool,
    observe: &mut dyn FnMut(Event),
) -> Result<Outcome, TrainError> {
    let (graph, config, save) = (run.graph, &run.config, run.save.as_deref());
    let data = &splits.train;
    if data.is_empty() {
        return Err(TrainError::NoTrainingData);
    }
    if config.batch == 0 {
        return Err(TrainError::ZeroBatch);
    }
    let mut optimizer = Optimizer::new(&config.optimizer, &graph.params);
    let (params, mut progress) = match start {
        Start::Fresh => (
            initialize(graph, config.init, config.seed),
            fresh_progress(config),
        ),
        Start::Resume(checkpoint) => {
            if let Some(state) = checkpoint.optimizer {
                optimizer
                    .resume(state)
                    .map_err(|e| TrainError::Resume(e.0))?;
            }
            let progress = checkpoint
                .progress
                .unwrap_or_else(|| fresh_progress(config));
            (checkpoint.params, progress)
        }
    };
    let batch = config.batch.min(data.len());
    let mut engines = Engines::new(graph, config.loss, run.threads, batch, &params)?;
    drop(params);
    let save_progress = |engines: &Engines, optimizer: &Optimizer, progress: &Progress| match save {
        Some(path) => checkpoint::save(
            path,
            graph,
            &engines.params(),
            Some(optimizer.state()),
            Some(progress),
        ),
        None => Ok(()),
    };
    save_progress(&engines, &optimizer, &progress)?;

    let mut records = Vec::new();
    let mut gathered = Batch::default();
    let mut ending = Ending::Finished;
    'epochs: for epoch in progress.epochs_done..config.epochs {
        let order = epoch_order(data.len(), progress.seed, epoch as u64);
        let batches = order.len().div_ceil(batch);
        observe(Event::EpochStart {
            epoch: epoch + 1,
            batches,
        });
        let lr = lr_at(
            &config.schedule,
            crate::ir::train::base_lr(&config.optimizer),
            config.epochs,
            epoch,
        );
        optimizer.set_lr(lr);
        let started = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0u64, 0usize);
        for (index, chunk) in order.chunks(batch).enumerate() {
            if stop.load(Ordering::Relaxed) {
                ending = Ending::Interrupted {
                    epoch: epoch + 1,
                    batch: index + 1,
                };
                break 'epochs;
            }
            data.gather(chunk, &mut gathered);
            let truth = match &data.labels {
                Labels::Classes { .. } => Truth::Classes(&gathered.classes),
                Labels::Targets { .. } => Truth::Targets(&gathered.targets),
            };
            let engine = engines.get(chunk.len())?;
            let mut masks = rng(
                progress.seed,
                Stream::Dropout {
                    step: progress.step,
                },
            );
            let loss = engine.train_step(&gathered.images, truth, &mut masks)?;
            if !loss.is_finite() {
                return Err(TrainError::NonFinite {
                    epoch: epoch + 1,
                    batch: index + 1,
                    loss,
                    kept: save.map(|p| (p.to_path_buf(), progress.epochs_done)),
                });
            }
            correct += count_correct(engine.output(), &gathered.classes);
            engine.update(&mut optimizer);
            progress.step += 1;
            loss_sum += f64::from(loss) * chunk.len() as f64;
            seen += chunk.len();
            observe(Event::Batch {
                running_loss: loss_sum / seen as f64,
                images_per_second: seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
            });
        }
        let seconds = started.elapsed().as_secs_f64();
        let test_acc = match &splits.test {
            Some(test) => accuracy(&mut engines, test, batch)?,
            None => None,
        };
        progress.epochs_done = epoch + 1;
        save_progress(&engines, &optimizer, &progress)?;
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / seen as f64,
            train_acc: match data.labels {
                Labels::Classes { .. } => Some(correct as f64 / seen as f64),
                Labels::Targets { .. } => None,
            },
            test_acc,
            lr,
            seconds,
            images_per_second: seen as f64 / seconds.max(1e-9),
        };
        observe(Event::EpochEnd(&record));
        records.push(record);
    }
    Ok(Outcome {
        records,
        ending,
        epochs_done: progress.epochs_done,
        params: engines.params().iter().map(|p| p.to_vec()).collect(),
        compile_seconds: engines.compile_seconds(),
        buffer_bytes: engines.buffer_bytes(),
    })
}

fn fresh_progress(config: &TrainConfig) -> Progress {
    Progress {
        epochs_done: 0,
        step: 0,
        seed: config.seed,
    }
}

/// Samples whose largest output is their class (none for targets: `classes` is then empty).
fn count_correct(output: &[f32], classes: &[u32]) -> u64 {
    if classes.is_empty() {
        return 0;
    }
    let units = output.len() / classes.len();
    output
        .chunks(units)
        .zip(classes)
        .filter(|(row, &class)| argmax(row) == class as usize)
        .count() as u64
}

/// Test accuracy in inference mode, `None` for targets.
fn accuracy(
    engines: &mut Engines,
    test: &Dataset,
    batch: usize,
) -> Result<Option<f64>, TrainError> {
    Ok(match evaluate(engines, test, batch)? {
        Evaluation::Classes(confusion) => Some(confusion.accuracy()),
        Evaluation::Targets { .. } => None,
    })
}

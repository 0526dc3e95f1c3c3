//! Training end to end: the learned-kernel example, LeNet on the committed MNIST sample,
//! resume equal to an uninterrupted run, identical checkpoints and logs for the same seed on
//! any thread count, and `cnnc eval`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use cnnc::reference::fixtures::model;
use cnnc::runtime::checkpoint;
use cnnc::runtime::data;
use cnnc::runtime::train::{self, Event, Overrides, Run, Start};
use cnnc::span::SourceMap;

mod support;

use support::{cnnc, root};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-train-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// d2l §7.2: one 1×2 convolution learns the edge detector K = [1, −1] (tolerance 1e-3, the
/// model file's recipe reaches 1e-4).
#[test]
fn edge_learns_the_kernel() {
    let graph = model("models/edge.cnn");
    let config = train::settings(graph.train.as_ref(), &Overrides::default()).expect("valid");
    let splits = data::load(&config.data, &root().join("models"), &graph, config.loss, 0)
        .expect("edge.npz loads");
    let run = Run {
        graph: &graph,
        config,
        threads: 1,
        save: None,
    };
    let outcome = train::train(
        &run,
        &splits,
        Start::Fresh,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .expect("trains");
    let kernel = &outcome.params[0];
    assert_eq!(kernel.len(), 2);
    assert!(
        (kernel[0] - 1.0).abs() < 1e-3 && (kernel[1] + 1.0).abs() < 1e-3,
        "{kernel:?}"
    );
    assert!(outcome.records.last().unwrap().train_loss < 1e-6);
}

/// The modern LeNet on the 512 committed MNIST images, batch 32 (16 steps, the last epoch
/// batch full, seeded): the mean loss of the last four batches is at least 0.1 below that of
/// the first four (measured: 2.29 → 2.12; the start is ln 10 ≈ 2.30).
#[test]
fn lenet_loss_falls_in_one_epoch_on_the_mnist_sample() {
    let graph = model("models/lenet_modern.cnn");
    let overrides = Overrides {
        data: Some(cnnc::ir::DataSource::Path(
            root().join("tests/data/mnist").to_string_lossy().into(),
        )),
        epochs: Some(1),
        batch: Some(32),
        ..Overrides::default()
    };
    let config = train::settings(graph.train.as_ref(), &overrides).expect("valid settings");
    let splits = data::load(&config.data, root(), &graph, config.loss, 0).expect("sample loads");
    let run = Run {
        graph: &graph,
        config,
        threads: 2,
        save: None,
    };
    // The running mean after each batch gives back each batch's loss.
    let mut running = Vec::new();
    let outcome = train::train(
        &run,
        &splits,
        Start::Fresh,
        &AtomicBool::new(false),
        &mut |event| {
            if let Event::Batch { running_loss, .. } = event {
                running.push(running_loss);
            }
        },
    )
    .expect("trains");
    let losses: Vec<f64> = (0..running.len())
        .map(|i| match i {
            0 => running[0],
            _ => running[i] * (i + 1) as f64 - running[i - 1] * i as f64,
        })
        .collect();
    assert_eq!(losses.len(), 16);
    let first: f64 = losses[..4].iter().sum::<f64>() / 4.0;
    let last: f64 = losses[12..].iter().sum::<f64>() / 4.0;
    assert!(last < first - 0.1, "first {first}, last {last}");
    let record = &outcome.records[0];
    assert!(record.test_acc.is_some() && record.train_acc.is_some());
}

/// The log without the wall-time fields.
fn log_without_times(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("log written")
        .lines()
        .map(|line| {
            let mut value: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            let object = value.as_object_mut().expect("an object per line");
            assert!(object.remove("seconds").is_some());
            assert!(object.remove("images_per_second").is_some());
            value
        })
        .collect()
}

/// The small network of the resume tests: the synthetic data of the seed (2×8×8 inputs, 512
/// samples in batches of 24: a partial last batch) and Adam (whose state must survive the
/// resume) keep them fast.
const SMALL: &str = "network small {
    input [2, 8, 8]
    conv 4 kernel=3 padding=1; batchnorm; relu
    maxpool kernel=2
    flatten; dropout 0.25; dense 10
    train { data = synthetic; batch = 24; optimizer = adam(lr=0.01); seed = 3 }
}";

fn bits(params: &[Vec<f32>]) -> Vec<Vec<u32>> {
    params
        .iter()
        .map(|p| p.iter().map(|v| v.to_bits()).collect())
        .collect()
}

/// 2 epochs, then `--resume` up to 3, equals 3 epochs in one go: the same weights bit for
/// bit and the same third log line; and the same seed and threads give the same log. `extra`
/// flags go to every run. Returns the uninterrupted run's log.
fn resume_equals_uninterrupted(name: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let dir = scratch(name);
    let file = dir.join("small.cnn");
    std::fs::write(&file, SMALL).unwrap();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let run = |epochs: &[&str], save: &str, log: &str| {
        let mut args = vec!["run", file.to_str().unwrap(), "--threads", "2"];
        args.extend(["--save", save, "--log", log]);
        args.extend(epochs);
        args.extend(extra);
        let out = cnnc(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (whole, part) = (path("whole.safetensors"), path("part.safetensors"));
    run(&["--epochs", "3"], &whole, &path("whole.jsonl"));
    run(
        &["--epochs", "3"],
        &path("again.safetensors"),
        &path("again.jsonl"),
    );
    run(&["--epochs", "2"], &part, &path("first.jsonl"));
    run(
        &["--epochs", "3", "--resume", &part],
        &part,
        &path("rest.jsonl"),
    );

    let graph = cnnc::load_file(&file, &mut SourceMap::default())
        .unwrap()
        .remove(0);
    let whole_ck = checkpoint::load(Path::new(&whole), &graph).unwrap();
    let part_ck = checkpoint::load(Path::new(&part), &graph).unwrap();
    assert_eq!(whole_ck.progress.map(|p| p.epochs_done), Some(3));
    assert_eq!(bits(&whole_ck.params), bits(&part_ck.params));
    assert_eq!(whole_ck.optimizer, part_ck.optimizer);
    assert_eq!(whole_ck.progress, part_ck.progress);

    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(path("again.safetensors")).unwrap(),
        "the same run saves the same bytes"
    );
    let whole_log = log_without_times(Path::new(&path("whole.jsonl")));
    assert_eq!(whole_log.len(), 3);
    assert_eq!(
        whole_log,
        log_without_times(Path::new(&path("again.jsonl")))
    );
    let mut resumed = log_without_times(Path::new(&path("first.jsonl")));
    resumed.extend(log_without_times(Path::new(&path("rest.jsonl"))));
    assert_eq!(whole_log, resumed);
    let _ = std::fs::remove_dir_all(&dir);
    whole_log
}

/// Results do not depend on the thread count: d2l's LeNet at batch 256 (whose kernels split
/// over the threads: `cnnc bench` runs its step 1.9× faster on 2) trained one epoch on
/// synthetic data on 1 and 2 threads saves the same bytes and logs the same losses and
/// accuracies.
#[test]
fn training_is_bitwise_the_same_on_any_thread_count() {
    let dir = scratch("threads");
    let model = root().join("models/lenet.cnn");
    let runs: Vec<(Vec<u8>, Vec<serde_json::Value>)> = ["1", "2"]
        .into_iter()
        .map(|threads| {
            let (save, log) = (
                dir.join(format!("w{threads}.safetensors")),
                dir.join(format!("log{threads}.jsonl")),
            );
            let out = cnnc(&[
                "run",
                model.to_str().unwrap(),
                "--data",
                "synthetic",
                "--epochs",
                "1",
                "--threads",
                threads,
                "--save",
                save.to_str().unwrap(),
                "--log",
                log.to_str().unwrap(),
            ]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            (std::fs::read(&save).unwrap(), log_without_times(&log))
        })
        .collect();
    assert!(runs[1].0 == runs[0].0, "weights on 2 threads differ");
    assert_eq!(runs[1].1, runs[0].1, "log on 2 threads");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Flags out of range, and outputs that cannot be written, are refused before training starts
/// (before anything is printed).
#[test]
fn bad_flags_are_refused_before_training_starts() {
    let model = root().join("models/lenet.cnn");
    for (flags, message) in [
        (&["--batch", "0"][..], "error: --batch must be at least 1"),
        (
            &["--lr", "nan"][..],
            "error: --lr must be positive, found NaN",
        ),
        (
            &["--threads", "0"][..],
            "error: --threads must be at least 1",
        ),
        (
            &["--plot", "/nonexistent-cnnc-folder/p.svg"][..],
            "error: cannot write `/nonexistent-cnnc-folder/p.svg`",
        ),
        (
            &["--log", "/nonexistent-cnnc-folder/l.jsonl"][..],
            "error: cannot write `/nonexistent-cnnc-folder/l.jsonl`",
        ),
    ] {
        let mut args = vec!["run", model.to_str().unwrap(), "--data", "synthetic"];
        args.extend(flags);
        let out = cnnc(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {stderr}");
        assert!(stderr.contains(message), "{flags:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{flags:?} printed {:?}", out.stdout);
    }
}

#[test]
fn resume_equals_an_uninterrupted_run_and_logs_are_reproducible() {
    let log = resume_equals_uninterrupted("resume", &[]);
    let rates: Vec<_> = log.iter().map(|l| l["lr"].as_f64()).collect();
    assert_eq!(rates, [Some(0.01); 3]);
}

/// The same with a step schedule that halves the rate every epoch: the resumed run continues
/// with the third epoch's rate.
#[test]
fn a_resumed_run_continues_the_step_schedule() {
    let log =
        resume_equals_uninterrupted("resume-step", &["--schedule", "step(every=1, gamma=0.5)"]);
    let rates: Vec<_> = log.iter().map(|l| l["lr"].as_f64()).collect();
    assert_eq!(rates, [Some(0.01), Some(0.005), Some(0.0025)]);
}

/// A cosine schedule spans the run's `--epochs`, so its interrupted run is one stopped (as by
/// Ctrl-C) after epoch 2 of 3; resumed, it ends where the uninterrupted run does, bit for bit,
/// with the same last record (rate included).
#[test]
fn an_interrupted_run_continues_the_cosine_schedule() {
    let dir = scratch("resume-cosine");
    let file = dir.join("small.cnn");
    std::fs::write(&file, SMALL).unwrap();
    let graph = cnnc::load_file(&file, &mut SourceMap::default())
        .unwrap()
        .remove(0);
    let overrides = Overrides {
        epochs: Some(3),
        schedule: Some(cnnc::ir::Schedule::Cosine { min_lr: 0.001 }),
        ..Overrides::default()
    };
    let config = train::settings(graph.train.as_ref(), &overrides).expect("valid settings");
    let splits = data::load(&config.data, &dir, &graph, config.loss, config.seed).unwrap();
    let run_to = |save: &Path, start: Start, stop_after: Option<usize>| {
        let run = Run {
            graph: &graph,
            config: config.clone(),
            threads: 2,
            save: Some(save.to_path_buf()),
        };
        let stop = AtomicBool::new(false);
        train::train(&run, &splits, start, &stop, &mut |event| {
            if let Event::EpochEnd(record) = event {
                if Some(record.epoch) == stop_after {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
        .expect("trains")
    };
    let (whole, part) = (dir.join("whole.safetensors"), dir.join("part.safetensors"));
    let uninterrupted = run_to(&whole, Start::Fresh, None);
    let stopped = run_to(&part, Start::Fresh, Some(2));
    assert_eq!(
        (stopped.ending, stopped.epochs_done),
        (train::Ending::Interrupted { epoch: 3, batch: 1 }, 2)
    );
    let resumed = run_to(
        &part,
        Start::Resume(checkpoint::load(&part, &graph).unwrap()),
        None,
    );
    assert_eq!(bits(&uninterrupted.params), bits(&resumed.params));
    let without_times = |r: &cnnc::runtime::report::EpochRecord| {
        (r.epoch, r.train_loss, r.train_acc, r.test_acc, r.lr)
    };
    let rates: Vec<f64> = uninterrupted.records.iter().map(|r| r.lr).collect();
    // lr 0.01 down to 0.001 over T = 3: 0.01, then 0.001 + 0.009·(1 + cos(π/3))/2, ...
    assert_eq!(rates[0], 0.01);
    assert!((rates[1] - 0.00775).abs() < 1e-12 && (rates[2] - 0.00325).abs() < 1e-12);
    assert_eq!(resumed.records.len(), 1);
    assert_eq!(
        without_times(&resumed.records[0]),
        without_times(&uninterrupted.records[2])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A learning rate far too large: the run stops naming the epoch and batch, suggests a lower
/// rate, and the checkpoint of the start stays loadable.
#[test]
fn a_diverging_run_stops_and_keeps_the_last_checkpoint() {
    let dir = scratch("nan");
    let save = dir.join("w.safetensors");
    let out = cnnc(&[
        "run",
        "models/lenet_modern.cnn",
        "--data",
        "synthetic",
        "--epochs",
        "2",
        "--batch",
        "64",
        "--lr",
        "1e30",
        "--save",
        save.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in epoch 1, batch"), "{stderr}");
    assert!(stderr.contains("lower learning rate"), "{stderr}");
    let graph = model("models/lenet_modern.cnn");
    let kept = checkpoint::load(&save, &graph).expect("the start checkpoint is intact");
    assert_eq!(kept.progress.map(|p| p.epochs_done), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cnnc eval` on the committed test sample: an accuracy line and a 10×10 matrix whose
/// counts add up to the 256 test images.
#[test]
fn eval_prints_accuracy_and_the_confusion_matrix() {
    let dir = scratch("eval");
    let save = dir.join("w.safetensors");
    let trained = cnnc(&[
        "run",
        "models/lenet_modern.cnn",
        "--data",
        "tests/data/mnist",
        "--epochs",
        "1",
        "--batch",
        "64",
        "--save",
        save.to_str().unwrap(),
    ]);
    assert_eq!(trained.status.code(), Some(0));
    let out = cnnc(&[
        "eval",
        "models/lenet_modern.cnn",
        "--weights",
        save.to_str().unwrap(),
        "--data",
        "tests/data/mnist",
        "--batch",
        "100",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("on the test data (256 samples)"), "{text}");
    assert!(text.contains("accuracy "), "{text}");
    let rows: Vec<Vec<u64>> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("true"))
        .skip(1)
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|n| n.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 10, "{text}");
    assert_eq!(rows.iter().flatten().sum::<u64>(), 256);
    let _ = std::fs::remove_dir_all(&dir);
}

//! `cnnc init`, `forward`, `grad` and `bench` end to end through the binary: a small network
//! with a batchnorm, `.npy` inputs written here, results checked against the reference
//! implementation, and every kind of wrong input refused with exit code 1 and a message naming
//! the thing at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cnnc::reference::{self, Mode};
use cnnc::span::SourceMap;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// Gaps allowed between the engine (f32 sums in loop order) and the reference (f64 sums).
const TOLERANCE: f32 = 1e-5;

const NETWORK: &str = "\
network small {
    input [1, 6, 6]
    conv 3 kernel=3 padding=1
    batchnorm
    relu
    maxpool kernel=2 stride=2
    flatten
    dense 4
}
";
const CLASSES: usize = 4;
const BATCH: usize = 3;

/// A fresh folder for one test, with the network written in it.
fn workdir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-engine-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("small.cnn"), NETWORK).expect("write network");
    dir
}

fn cnnc(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("the cnnc binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn succeeds(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
}

/// Exit code 1, no panic, and a message containing every one of `needles`.
fn fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
}

fn write_npy<T: ndarray_npy::WritableElement>(path: &Path, array: &ArrayD<T>) {
    let file = std::fs::File::create(path).expect("create npy");
    array.write_npy(file).expect("write npy");
}

/// A deterministic input batch `[BATCH, 1, 6, 6]`.
fn input() -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(&[BATCH, 1, 6, 6]), |i| {
        ((i[0] * 36 + i[2] * 6 + i[3]) * 37 % 19) as f32 / 19.0 - 0.4
    })
}

fn labels() -> ArrayD<i64> {
    ArrayD::from_shape_vec(IxDyn(&[BATCH]), vec![2, 0, 3]).expect("labels")
}

fn graph(dir: &Path) -> cnnc::ir::Graph {
    cnnc::load_file(&dir.join("small.cnn"), &mut SourceMap::default())
        .expect("the network checks")
        .remove(0)
}

/// Every tensor of a safetensors file, with its shape.
fn read_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).expect("read safetensors");
    let file = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// Writes `tensors` (f32 unless the name is in `as_f64`) to a safetensors file.
fn write_tensors(path: &Path, tensors: &HashMap<String, (Vec<usize>, Vec<f32>)>, as_f64: &[&str]) {
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            if as_f64.contains(&name.as_str()) {
                let data = values
                    .iter()
                    .flat_map(|&v| f64::from(v).to_le_bytes())
                    .collect();
                (name.clone(), Dtype::F64, shape.clone(), data)
            } else {
                let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name.clone(), Dtype::F32, shape.clone(), data)
            }
        })
        .collect();
    let views = bytes.iter().map(|(name, dtype, shape, data)| {
        (
            name.clone(),
            TensorView::new(*dtype, shape.clone(), data).expect("consistent tensor"),
        )
    });
    let serialized = safetensors::tensor::serialize(views, None).expect("serialize");
    std::fs::write(path, serialized).expect("write safetensors");
}

/// `init`, the inputs and labels written: the setup of most tests.
fn prepared(test: &str) -> PathBuf {
    let dir = workdir(test);
    succeeds(&cnnc(
        &dir,
        &[
            "init",
            "small.cnn",
            "--seed",
            "5",
            "--output",
            "w.safetensors",
        ],
    ));
    write_npy(&dir.join("x.npy"), &input());
    write_npy(&dir.join("labels.npy"), &labels());
    dir
}

fn reference_params(dir: &Path, graph: &cnnc::ir::Graph) -> Vec<ArrayD<f32>> {
    let weights = read_tensors(&dir.join("w.safetensors"));
    graph
        .params
        .iter()
        .map(|p| {
            let (shape, values) = &weights[&p.name];
            ArrayD::from_shape_vec(IxDyn(shape), values.clone()).expect("shape")
        })
        .collect()
}

fn assert_close(actual: &[f32], expected: &ArrayD<f32>, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (a, e) in actual.iter().zip(expected.iter()) {
        assert!(
            (a - e).abs() <= TOLERANCE,
            "{what}: cnnc {a}, reference {e}"
        );
    }
}

#[test]
fn init_writes_every_parameter_and_buffer_reproducibly() {
    let dir = prepared("init");
    let weights = read_tensors(&dir.join("w.safetensors"));
    let graph = graph(&dir);
    assert_eq!(weights.len(), graph.params.len());
    for p in &graph.params {
        assert_eq!(weights[&p.name].0, p.shape, "{}", p.name);
    }
    // PyTorch's default bound for conv1: 1/sqrt(fan_in) = 1/3.
    assert!(weights["conv1.weight"]
        .1
        .iter()
        .all(|w| w.abs() <= 1.0 / 3.0));
    assert!(weights["batchnorm1.running_var"]
        .1
        .iter()
        .all(|&v| v == 1.0));
    succeeds(&cnnc(
        &dir,
        &[
            "init",
            "small.cnn",
            "--seed",
            "5",
            "--output",
            "again.safetensors",
        ],
    ));
    assert_eq!(
        std::fs::read(dir.join("w.safetensors")).unwrap(),
        std::fs::read(dir.join("again.safetensors")).unwrap()
    );
}

#[test]
fn forward_matches_the_reference_and_is_the_same_on_one_and_two_threads() {
    let dir = prepared("forward");
    for threads in ["1", "2"] {
        let out = format!("y{threads}.npy");
        succeeds(&cnnc(
            &dir,
            &[
                "forward",
                "small.cnn",
                "--weights",
                "w.safetensors",
                "--input",
                "x.npy",
                "--output",
                &out,
                "--threads",
                threads,
            ],
        ));
    }
    let one = std::fs::read(dir.join("y1.npy")).unwrap();
    assert_eq!(
        one,
        std::fs::read(dir.join("y2.npy")).unwrap(),
        "bitwise equal outputs"
    );

    let y = cnnc::runtime::tensors::read_f32(&dir.join("y1.npy")).expect("output npy");
    assert_eq!(y.shape(), [BATCH, CLASSES]);
    let graph = graph(&dir);
    let mut params = reference_params(&dir, &graph);
    let values = reference::forward(&graph, &mut params, &input(), Mode::Infer, &[]);
    assert_close(
        y.as_slice().unwrap(),
        &values[graph.output.0 as usize],
        "output",
    );
}

#[test]
fn grad_matches_the_reference() {
    let dir = prepared("grad");
    let out = cnnc(
        &dir,
        &[
            "grad",
            "small.cnn",
            "--weights",
            "w.safetensors",
            "--input",
            "x.npy",
            "--labels",
            "labels.npy",
            "--output",
            "g.safetensors",
            "--save-weights",
            "after.safetensors",
        ],
    );
    succeeds(&out);
    let graph = graph(&dir);
    let mut params = reference_params(&dir, &graph);
    let values = reference::forward(&graph, &mut params, &input(), Mode::Train, &[]);
    let classes: Vec<usize> = labels().iter().map(|&l| l as usize).collect();
    let (loss, grad) = reference::loss::cross_entropy(&values[graph.output.0 as usize], &classes);
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let shown: f32 = printed
        .lines()
        .find_map(|l| l.strip_prefix("loss "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no loss line in {printed}"));
    assert!((shown - loss).abs() <= TOLERANCE, "loss {shown} vs {loss}");

    let grads = reference::backward(&graph, &params, &values, &[], grad);
    let written = read_tensors(&dir.join("g.safetensors"));
    let trainable: Vec<_> = graph.params.iter().filter(|p| p.kind.trainable()).collect();
    assert_eq!(written.len(), trainable.len(), "only trainable parameters");
    for (p, g) in graph.params.iter().zip(&grads.params) {
        if let Some(g) = g {
            let (shape, values) = &written[&p.name];
            assert_eq!(shape, &p.shape);
            assert_close(values, g, &p.name);
        }
    }

    // `--save-weights`: the parameters as they were, the running statistics updated by the
    // training-mode forward (the reference's `params` were updated in place the same way).
    let after = read_tensors(&dir.join("after.safetensors"));
    let before = read_tensors(&dir.join("w.safetensors"));
    assert_eq!(
        after.len(),
        graph.params.len(),
        "every parameter and buffer"
    );
    for (p, expected) in graph.params.iter().zip(&params) {
        let (shape, values) = &after[&p.name];
        assert_eq!(shape, &p.shape);
        assert_close(values, expected, &p.name);
        let changed = values != &before[&p.name].1;
        assert_eq!(
            changed,
            !p.kind.trainable(),
            "{} changed: {changed}",
            p.name
        );
    }
}

#[test]
fn wrong_weights_are_refused_naming_the_tensor() {
    let dir = prepared("weights");
    let good = read_tensors(&dir.join("w.safetensors"));
    let forward = |weights: &str| {
        cnnc(
            &dir,
            &[
                "forward",
                "small.cnn",
                "--weights",
                weights,
                "--input",
                "x.npy",
                "--output",
                "y.npy",
            ],
        )
    };

    let mut missing = good.clone();
    missing.remove("conv1.bias");
    write_tensors(&dir.join("missing.safetensors"), &missing, &[]);
    fails_with(
        &forward("missing.safetensors"),
        &["missing.safetensors", "missing tensor `conv1.bias`"],
    );

    let mut extra = good.clone();
    extra.insert("conv1.weigth".into(), (vec![1], vec![0.0]));
    write_tensors(&dir.join("extra.safetensors"), &extra, &[]);
    fails_with(
        &forward("extra.safetensors"),
        &["`conv1.weigth` is not a parameter", "conv1.weight"],
    );

    let mut reshaped = good.clone();
    reshaped.get_mut("dense1.weight").unwrap().0 = vec![27, 4];
    write_tensors(&dir.join("shape.safetensors"), &reshaped, &[]);
    fails_with(
        &forward("shape.safetensors"),
        &["`dense1.weight` has shape [27, 4]", "[4, 27]"],
    );

    write_tensors(&dir.join("f64.safetensors"), &good, &["conv1.weight"]);
    fails_with(&forward("f64.safetensors"), &["`conv1.weight` is F64"]);

    let bytes = std::fs::read(dir.join("w.safetensors")).unwrap();
    std::fs::write(dir.join("cut.safetensors"), &bytes[..bytes.len() - 10]).unwrap();
    fails_with(
        &forward("cut.safetensors"),
        &["cut.safetensors", "truncated or corrupt"],
    );

    fails_with(&forward("absent.safetensors"), &["absent.safetensors"]);
}

#[test]
fn wrong_inputs_and_labels_are_refused_naming_the_file() {
    let dir = prepared("inputs");
    let run = |command: &str, input: &str, labels: &str| {
        let mut args = vec![
            command,
            "small.cnn",
            "--weights",
            "w.safetensors",
            "--input",
            input,
        ];
        if command == "grad" {
            args.extend(["--labels", labels]);
        }
        args.extend(["--output", "out.bin"]);
        cnnc(&dir, &args)
    };

    write_npy(
        &dir.join("small.npy"),
        &ArrayD::<f32>::zeros(IxDyn(&[2, 1, 5, 6])),
    );
    fails_with(
        &run("forward", "small.npy", ""),
        &["small.npy", "[2, 1, 5, 6]", "[N, 1, 6, 6]"],
    );
    write_npy(&dir.join("flat.npy"), &ArrayD::<f32>::zeros(IxDyn(&[36])));
    fails_with(&run("forward", "flat.npy", ""), &["flat.npy", "[36]"]);
    write_npy(&dir.join("double.npy"), &input().mapv(f64::from));
    fails_with(
        &run("forward", "double.npy", ""),
        &["double.npy", "float64", "float32"],
    );
    let bytes = std::fs::read(dir.join("x.npy")).unwrap();
    std::fs::write(dir.join("cut.npy"), &bytes[..bytes.len() - 7]).unwrap();
    fails_with(&run("forward", "cut.npy", ""), &["cut.npy", "truncated"]);
    std::fs::write(dir.join("junk.npy"), b"definitely not numpy").unwrap();
    fails_with(
        &run("forward", "junk.npy", ""),
        &["junk.npy", "not a valid .npy"],
    );

    write_npy(
        &dir.join("high.npy"),
        &ArrayD::from_shape_vec(IxDyn(&[BATCH]), vec![0i64, 4, 1]).unwrap(),
    );
    fails_with(
        &run("grad", "x.npy", "high.npy"),
        &["high.npy", "label 1 is 4", "0..4"],
    );
    write_npy(
        &dir.join("negative.npy"),
        &ArrayD::from_shape_vec(IxDyn(&[BATCH]), vec![0i64, 1, -1]).unwrap(),
    );
    fails_with(&run("grad", "x.npy", "negative.npy"), &["label 2 is -1"]);
    write_npy(
        &dir.join("two.npy"),
        &ArrayD::from_shape_vec(IxDyn(&[2]), vec![0i64, 1]).unwrap(),
    );
    fails_with(
        &run("grad", "x.npy", "two.npy"),
        &["two.npy", "[2]", "expected [3]"],
    );
    write_npy(&dir.join("float_labels.npy"), &labels().mapv(|l| l as f32));
    fails_with(
        &run("grad", "x.npy", "float_labels.npy"),
        &["float_labels.npy", "float32", "int64"],
    );
}

#[test]
fn thread_count_zero_and_unknown_networks_are_refused_and_threads_beyond_the_cores_noted() {
    let dir = prepared("usage");
    let forward = |threads: &str| {
        cnnc(
            &dir,
            &[
                "forward",
                "small.cnn",
                "--weights",
                "w.safetensors",
                "--input",
                "x.npy",
                "--output",
                "y.npy",
                "--threads",
                threads,
            ],
        )
    };
    fails_with(&forward("0"), &["--threads must be at least 1"]);
    // More threads than any machine has cores: the cores, with a note.
    let many = forward("100000");
    succeeds(&many);
    assert!(
        stderr(&many).contains("note: --threads 100000 is more than the"),
        "{}",
        stderr(&many)
    );
    fails_with(
        &cnnc(
            &dir,
            &[
                "init",
                "small.cnn",
                "--network",
                "smal",
                "--seed",
                "1",
                "--output",
                "w2.safetensors",
            ],
        ),
        &["no network named `smal`", "did you mean `small`?"],
    );
}

/// A batch no machine has the memory for, and one above the limit: exit code 1 and a
/// sentence, where the workspace's allocation used to abort the process.
#[test]
fn absurd_batches_are_refused() {
    let dir = workdir("absurd-batch");
    let lenet = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lenet.cnn");
    let lenet = lenet.to_str().unwrap();
    fails_with(
        &cnnc(&dir, &["bench", lenet, "--batch", "16000000"]),
        &[
            "the workspace for a batch of 16000000 needs",
            "use a smaller batch",
        ],
    );
    fails_with(
        &cnnc(&dir, &["bench", lenet, "--batch", "100000000"]),
        &["a batch of 100000000 is above cnnc's limit of 16777216"],
    );
}

#[test]
fn bench_reports_the_documented_json_keys() {
    let dir = workdir("bench");
    let out = cnnc(
        &dir,
        &[
            "bench",
            "small.cnn",
            "--batch",
            "2",
            "--threads",
            "1",
            "--layers",
            "--format",
            "json",
        ],
    );
    succeeds(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    for key in [
        "train_images_per_second",
        "infer_images_per_second",
        "compile_seconds",
    ] {
        let value = json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {json}"));
        assert!(value > 0.0, "{key} = {value}");
    }
    assert!(
        json["gflops"]["infer"].as_f64().is_some_and(|g| g > 0.0),
        "{json}"
    );
    let graph = graph(&dir);
    let params: usize = graph.params.iter().map(|p| p.numel()).sum();
    // At least every parameter, its gradient (buffers have none) and the input batch.
    let floor = (2 * params + 2 * 36) * 4;
    assert!(
        json["peak_bytes"]
            .as_u64()
            .is_some_and(|b| b as usize >= floor),
        "{json}"
    );
    // The peak is measured where the CPU has FMA (every x86-64 host this runs on), and the
    // fraction is of it.
    let source = json["peak_source"].as_str().expect("peak_source");
    assert!(source == "measured" || source == "unknown", "{json}");
    if source == "measured" {
        let peak = json["peak_gflops"].as_f64().expect("a measured peak");
        let fraction = json["peak_fraction"]["train"].as_f64().expect("a fraction");
        let gflops = json["gflops"]["train"].as_f64().expect("train GFLOP/s");
        assert!(
            peak > 0.0 && (fraction - gflops / peak).abs() < 1e-9,
            "{json}"
        );
        assert!(
            [4, 8, 16].contains(&json["peak_lanes"].as_u64().expect("lanes")),
            "{json}"
        );
    }
    let layers = json["layers"]
        .as_array()
        .expect("--layers adds per-kernel rows");
    assert!(layers
        .iter()
        .any(|k| k["kernel"] == "conv1.forward" && k["gflops"].as_f64().is_some()));
    assert!(layers
        .iter()
        .any(|k| k["kernel"] == "dense1.backward_weight" && k["train_seconds"].as_f64().is_some()));
}

//! The `cnnc` binary end to end: exit codes, text and JSON outputs, diagnostics on stderr.

use std::process::{Command, Output};

fn cnnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("the cnnc binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_prints_the_table_and_exits_zero() {
    let out = cnnc(&["check", "models/lenet.cnn"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("conv2     conv     [16, 10, 10]"), "{text}");
    assert!(text.contains("61,706 trainable"), "{text}");
}

#[test]
fn check_json_has_the_documented_fields() {
    let out = cnnc(&["check", "models/lenet.cnn", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let net = &json["networks"][0];
    assert_eq!(net["name"], "lenet");
    assert_eq!(net["input"], serde_json::json!([1, 28, 28]));
    assert_eq!(net["output"], serde_json::json!([10]));
    assert_eq!(net["params"], 61706);
    let layers = net["layers"].as_array().expect("layers");
    assert_eq!(layers[1]["path"], "conv1");
    assert_eq!(layers[1]["op"], "conv");
    assert_eq!(layers[1]["output"], serde_json::json!([6, 28, 28]));
    // conv1: 6·28·28 outputs × 1·5·5 products each.
    assert_eq!(layers[1]["macs"], 6 * 28 * 28 * 25);
    let sum: u64 = layers.iter().map(|l| l["macs"].as_u64().unwrap()).sum();
    assert_eq!(net["macs"].as_u64(), Some(sum));
}

#[test]
fn params_json_lists_buffers_as_untrainable() {
    let out = cnnc(&["params", "models/resnet18.cnn", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let running = rows
        .iter()
        .find(|r| {
            r["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("running_mean"))
        })
        .expect("a buffer");
    assert_eq!(running["trainable"], false);
    let weights = rows.iter().filter(|r| r["trainable"] == true).count();
    assert!(weights > 0);
}

#[test]
fn network_flag_selects_one_network_and_reports_unknown_names() {
    let out = cnnc(&[
        "check",
        "tests/golden/residual_bn.cnn",
        "--network",
        "residual_bn",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = cnnc(&["check", "models/lenet.cnn", "--network", "lenett"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("error[E0026]") && err.contains("did you mean `lenet`?"),
        "{err}"
    );
}

#[test]
fn mistakes_exit_one_with_a_plain_diagnostic() {
    let out = cnnc(&["check", "tests/errors/kernel_too_large.cnn"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("error[E0013]: the kernel 5 is larger than the padded input 4"),
        "{err}"
    );
    assert!(
        err.contains("tests/errors/kernel_too_large.cnn:8:13"),
        "{err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "NO_COLOR output has no escape codes"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn missing_file_is_a_diagnostic() {
    let out = cnnc(&["check", "no/such/file.cnn"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("error[E0003]"));
}

#[test]
fn dumps_are_deterministic() {
    for stage in ["ast", "ir", "fused"] {
        let a = cnnc(&["dump", "--stage", stage, "models/googlenet.cnn"]);
        let b = cnnc(&["dump", "--stage", stage, "models/googlenet.cnn"]);
        assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
        assert_eq!(a.stdout, b.stdout);
        assert!(!a.stdout.is_empty());
    }
}

#[test]
fn bad_usage_exits_two() {
    assert_eq!(cnnc(&["check"]).status.code(), Some(2));
    assert_eq!(cnnc(&["frobnicate"]).status.code(), Some(2));
}

//! The `schedule` key and `cnnc run --schedule`: the learning rate of every epoch against
//! PyTorch's schedulers (`tests/golden/schedules.json`, made by `scripts/schedule_golden.py`),
//! the flag read as the key is, and its errors.

use cnnc::cli::run::schedule_flag;
use cnnc::ir::Schedule;
use cnnc::runtime::schedule::lr_at;
use cnnc::span::SourceMap;

mod support;

use support::{cnnc, root};

fn schedule(text: &str) -> Schedule {
    schedule_flag(text, &mut SourceMap::default()).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Every epoch's rate equals PyTorch's `param_groups[0]["lr"]` bit for bit (f64), and so the
/// f32 the optimisers use is PyTorch's too.
#[test]
fn rates_per_epoch_are_pytorchs() {
    let text = std::fs::read_to_string(root().join("tests/golden/schedules.json")).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for case in cases {
        let written = case["schedule"].as_str().unwrap();
        let lr: f32 = case["lr"].as_str().unwrap().parse().unwrap();
        let epochs = case["epochs"].as_u64().unwrap() as usize;
        let expected: Vec<f64> = case["rates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(expected.len(), epochs);
        let schedule = schedule(written);
        for (epoch, want) in expected.iter().enumerate() {
            let got = lr_at(&schedule, lr, epochs, epoch);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{written}, lr {lr}, epoch {epoch}: {got} vs PyTorch's {want}"
            );
        }
    }
}

/// The flag reads what `Display` writes back to the same schedule, and the defaults are
/// PyTorch's (gamma 0.1, eta_min 0).
#[test]
fn the_flag_reads_the_printed_schedule_back() {
    assert_eq!(schedule("constant"), Schedule::Constant);
    assert_eq!(schedule("cosine"), Schedule::Cosine { min_lr: 0.0 });
    assert_eq!(schedule("cosine()"), Schedule::Cosine { min_lr: 0.0 });
    assert_eq!(
        schedule("step(5)"),
        Schedule::Step {
            every: 5,
            gamma: 0.1
        }
    );
    for text in [
        "constant",
        "step(every=3, gamma=0.5)",
        "step(every = 2, gamma = 2)",
        "cosine(min_lr=1e-5)",
        "cosine(min_lr=0)",
    ] {
        let first = schedule(text);
        assert_eq!(schedule(&first.to_string()), first, "{text} → {first}");
    }
}

fn rejected(text: &str) -> String {
    match schedule_flag(text, &mut SourceMap::default()) {
        Ok(s) => panic!("{text} was read as {s}"),
        Err(message) => message,
    }
}

/// Each mistake is a diagnostic pointing into the flag's text.
#[test]
fn bad_schedules_are_diagnostics() {
    let cases = [
        ("cosin", "did you mean `cosine`?"),
        ("linear", "unknown schedule `linear`"),
        ("step", "needs the argument `every`"),
        (
            "step(every=0)",
            "`every` must be a positive number of epochs, found 0",
        ),
        ("step(every=2.5)", "expected an integer"),
        (
            "step(every=2, gamma=0)",
            "`gamma` must be positive, found 0",
        ),
        ("step(every=2, gamma=-0.5)", "`gamma` must be positive"),
        ("step(evry=2)", "did you mean `every`?"),
        ("step(2, 0.5)", "give the others by name: `gamma`"),
        ("cosine(min_lr=-0.1)", "`min_lr` must be zero or more"),
        ("cosine(eta_min=0.1)", "has no argument `eta_min`"),
        ("cosine(min_lr=x)", "unknown name"),
        ("constant(1)", "takes no positional arguments"),
        ("3", "must be constant, step(every=..) or cosine"),
        ("step(every=2", "--schedule:1:"),
    ];
    for (text, wanted) in cases {
        let message = rejected(text);
        assert!(
            message.contains(wanted) && message.contains("--schedule"),
            "{text}: wanted `{wanted}` in\n{message}"
        );
    }
}

/// In a file the key has the same checks, `let` names are visible, and `min_lr` must be
/// below the optimiser's `lr` wherever the two are written.
#[test]
fn the_key_in_a_train_section() {
    let load = |settings: &str| {
        let text = format!(
            "network n {{\n input [4]\n let every = 3\n dense 2\n train {{ {settings} }}\n}}"
        );
        cnnc::load_str("t.cnn", &text, &mut SourceMap::default())
            .map(|mut g| g.remove(0).train.unwrap_or_default())
            .map_err(|d| (d[0].code, d[0].message.clone()))
    };
    assert_eq!(
        load("schedule = step(every)").unwrap().schedule,
        Schedule::Step {
            every: 3,
            gamma: 0.1
        }
    );
    assert_eq!(load("").unwrap().schedule, Schedule::Constant);
    let (code, message) =
        load("schedule = cosine(min_lr=0.1); optimizer = sgd(lr=0.05)").unwrap_err();
    assert_eq!(code, cnnc::diag::Code::BadTrainSetting);
    assert!(
        message.contains("below the learning rate 0.05"),
        "{message}"
    );
    assert!(load("optimizer = sgd(lr=0.05); schedule = cosine(min_lr=0.01)").is_ok());
    assert!(load("schedule = cosin").is_err());
    assert!(load("schedule = constant; schedule = cosine").is_err());
}

/// The flags' errors: a diagnostic for `--schedule`, a sentence for the numbers; nothing trains.
#[test]
fn run_rejects_bad_flags_before_training() {
    let model = "models/lenet_modern.cnn";
    let cases: [(&[&str], &str); 6] = [
        (&["--schedule", "cosin"], "did you mean `cosine`?"),
        (
            &["--schedule", "cosine(min_lr=0.5)"],
            "must be below the learning rate 0.1",
        ),
        (
            &["--lr", "0.01", "--schedule", "cosine(min_lr=0.01)"],
            "must be below the learning rate 0.01",
        ),
        (
            &["--momentum", "1"],
            "--momentum must be at least 0 and below 1, found 1",
        ),
        (
            &["--optimizer", "adam", "--momentum", "0.9"],
            "--momentum is a setting of sgd",
        ),
        (
            &["--weight-decay=-1"],
            "--weight-decay must be zero or more, found -1",
        ),
    ];
    for (flags, wanted) in cases {
        let mut args = vec!["run", model, "--data", "synthetic", "--epochs", "1"];
        args.extend(flags);
        let out = cnnc(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {stderr}");
        assert!(
            stderr.contains(wanted),
            "{flags:?}: wanted `{wanted}` in\n{stderr}"
        );
        assert!(out.stdout.is_empty(), "{flags:?} started training");
    }
}

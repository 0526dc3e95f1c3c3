//! `cnnc dump --stage loops|clif` of `models/lenet.cnn`, snapshotted: any change to what a
//! layer lowers to, or to the Cranelift IR generated for it, shows up in review. The dumps are
//! built twice to check they are deterministic.

use std::path::Path;

use cnnc::cli::{dump, Stage};
use cnnc::span::SourceMap;

fn dump_lenet(stage: Stage) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lenet.cnn");
    let text = dump::report(stage, &path, None, &mut SourceMap::default())
        .unwrap_or_else(|e| panic!("dump of lenet fails: {e:?}"));
    let again = dump::report(stage, &path, None, &mut SourceMap::default()).expect("dump");
    assert_eq!(text, again, "the dump is deterministic");
    text
}

#[test]
fn loops_of_lenet() {
    let text = dump_lenet(Stage::Loops);
    assert!(
        text.starts_with("; network lenet at batch 1"),
        "{}",
        &text[..80]
    );
    insta::assert_snapshot!(text);
}

/// The Cranelift IR depends on the host's calling convention and pointer width: x86-64 only.
#[cfg(target_arch = "x86_64")]
#[test]
fn clif_of_lenet() {
    let text = dump_lenet(Stage::Clif);
    assert!(
        text.contains("; conv1.forward piece 0"),
        "conv1's kernel is there"
    );
    insta::assert_snapshot!(text);
}

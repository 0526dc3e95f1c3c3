//! LANGUAGE.md feature by feature: each test loads a small program and checks the graph —
//! shapes, names, parameter layouts, defaults and the `train` section.

use cnnc::ir::{DataSource, Graph, Init, Loss, Op, Optimizer};
use cnnc::span::SourceMap;

fn load(text: &str) -> Graph {
    let mut sources = SourceMap::default();
    match cnnc::load_str("test.cnn", text, &mut sources) {
        Ok(mut graphs) => graphs.remove(0),
        Err(d) => panic!("{}", cnnc::cli::render::render(&sources, &d, false)),
    }
}

fn node<'a>(g: &'a Graph, name: &str) -> &'a cnnc::ir::Node {
    g.nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no node {name}: {:?}", names(g)))
}

fn names(g: &Graph) -> Vec<&str> {
    g.nodes.iter().map(|n| n.name.as_str()).collect()
}

fn param_shape<'a>(g: &'a Graph, name: &str) -> &'a [usize] {
    &g.params
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no param {name}"))
        .shape
}

#[test]
fn branches_from_the_language_page() {
    let g = load(
        "network n {
            input [192, 12, 12]
            concat {
                branch { conv 64 kernel=1; relu }
                branch { maxpool kernel=3 stride=1 padding=1; conv 32 kernel=1; relu }
            }
            add {
                branch { conv 96 kernel=3 padding=1; batchnorm; relu; conv 96 kernel=3 padding=1; batchnorm }
                branch { identity }
            }
            residual { conv 96 kernel=3 padding=1 }
            repeat 3 { conv 256 kernel=3 padding=1; relu }
        }",
    );
    assert_eq!(node(&g, "concat1").shape.0, [96, 12, 12]);
    assert_eq!(node(&g, "branch2.maxpool1").shape.0, [192, 12, 12]);
    // The add's branches are siblings of the concat's: branch3 and branch4.
    assert_eq!(node(&g, "add1").inputs.len(), 2);
    assert!(matches!(node(&g, "branch4.identity1").op, Op::Identity));
    let residual = node(&g, "residual1");
    assert!(matches!(residual.op, Op::Add));
    assert_eq!(
        residual.inputs[1],
        g.nodes
            .iter()
            .position(|n| n.name == "add1")
            .map(|i| cnnc::ir::NodeId(i as u32))
            .unwrap()
    );
    assert_eq!(param_shape(&g, "residual1.conv1.weight"), [96, 96, 3, 3]);
    // Repeat bodies are unrolled before counting.
    assert_eq!(node(&g, "conv3").shape.0, [256, 12, 12]);
    assert_eq!(g.node(g.output).name, "relu3");
}

#[test]
fn blocks_take_positional_keyword_and_default_arguments() {
    let g = load(
        "block vgg_block(convs, channels) {
            repeat convs { conv channels kernel=3 padding=1; relu }
            maxpool kernel=2 stride=2
        }
        network n {
            input [1, 32, 32]
            vgg_block(1, 64); vgg_block(channels=128, convs=2)
            nin(16, 3, padding=1)
            stem: nin(8, kernel=1)
        }",
    );
    assert_eq!(node(&g, "vgg_block1.maxpool1").shape.0, [64, 16, 16]);
    assert_eq!(node(&g, "vgg_block2.conv2").shape.0, [128, 16, 16]);
    assert_eq!(node(&g, "nin1.conv1").shape.0, [16, 8, 8]);
    assert_eq!(param_shape(&g, "stem.conv3.weight"), [8, 8, 1, 1]);
}

#[test]
fn prelude_inception_gives_256_channels() {
    let g = load("network n { input [192, 28, 28]\n inception(64, (96, 128), (16, 32), 32) }");
    assert_eq!(g.output_shape().0, [256, 28, 28]);
    assert_eq!(
        param_shape(&g, "inception1.branch2.conv2.weight"),
        [128, 96, 3, 3]
    );
    assert_eq!(
        param_shape(&g, "inception1.branch4.conv1.weight"),
        [32, 192, 1, 1]
    );
}

#[test]
fn let_arithmetic_and_tuple_indexing() {
    let g = load("network n {\n let width = 16\n let pair = (width / 2, width * 2 - 1)\n input [3, 8, 8]\n conv pair[1] kernel=(1 + 2, 3) padding=(width - 15, 1) }");
    assert_eq!(g.output_shape().0, [31, 8, 8]);
}

/// LANGUAGE.md promises arithmetic "with parentheses": a parenthesised first argument of a
/// layer is a value, not a call's argument list, whatever follows it.
#[test]
fn parenthesised_expressions_as_layer_arguments() {
    let g = load(
        "network n { input [1, 8, 8]; let a = 3\n conv (a + 1) kernel=3\n conv (a + 1) * 2 kernel=(a - 1)\n conv(a, kernel=1)\n conv (a, kernel=1) }",
    );
    let channels: Vec<usize> = ["conv1", "conv2", "conv3", "conv4"]
        .iter()
        .map(|name| node(&g, name).shape.0[0])
        .collect();
    assert_eq!(channels, [4, 8, 3, 3]);
    assert_eq!(param_shape(&g, "conv2.weight"), [8, 4, 2, 2]);
}

/// The fix that the diagnostic for a label inside a `repeat` suggests works: a labelled layer
/// in a block, the block's call repeated, gives one name per call.
#[test]
fn a_labelled_layer_repeats_through_a_block_call() {
    let g = load(
        "block stage_block() { stage: conv 4 kernel=3 padding=1; relu }\nnetwork n { input [4, 8, 8]; repeat 2 { stage_block() } }",
    );
    assert_eq!(param_shape(&g, "stage_block1.stage.weight"), [4, 4, 3, 3]);
    assert_eq!(param_shape(&g, "stage_block2.stage.weight"), [4, 4, 3, 3]);
}

#[test]
fn same_padding_follows_pytorch_for_even_kernels_and_dilation() {
    let g = load("network n { input [2, 10, 10]\n conv 4 kernel=4 padding=same\n conv 4 kernel=3 dilation=2 padding=same }");
    let Op::Conv(even) = &g.nodes[1].op else {
        panic!("not a conv")
    };
    assert_eq!(even.padding, [(1, 2), (1, 2)]);
    let Op::Conv(dilated) = &g.nodes[2].op else {
        panic!("not a conv")
    };
    assert_eq!(dilated.padding, [(2, 2), (2, 2)]);
    assert_eq!(g.output_shape().0, [4, 10, 10]);
}

#[test]
fn pooling_stride_defaults_to_the_kernel() {
    let g = load("network n { input [3, 9, 9]\n maxpool kernel=3\n avgpool kernel=2 stride=1 }");
    assert_eq!(g.nodes[1].shape.0, [3, 3, 3]);
    assert_eq!(g.nodes[2].shape.0, [3, 2, 2]);
}

#[test]
fn one_and_three_spatial_axes() {
    let g = load("network n { input [4, 100]\n conv 8 kernel=5 stride=2; maxpool kernel=2; global_avgpool; dense 3 }");
    assert_eq!(g.nodes[1].shape.0, [8, 48]);
    assert_eq!(param_shape(&g, "conv1.weight"), [8, 4, 5]);
    let g = load("network n { input [1, 8, 16, 16]\n conv 4 kernel=(1, 3, 3) padding=(0, 1, 1); avgpool kernel=2; flatten }");
    assert_eq!(param_shape(&g, "conv1.weight"), [4, 1, 1, 3, 3]);
    assert_eq!(g.output_shape().0, [4 * 4 * 8 * 8]);
}

#[test]
fn groups_bias_and_batchnorm_layouts() {
    let g = load("network n { input [8, 6, 6]\n conv 16 kernel=3 groups=4 bias=false; batchnorm eps=0.001 momentum=0.2; flatten; dense 5 bias=false }");
    assert_eq!(param_shape(&g, "conv1.weight"), [16, 2, 3, 3]);
    assert!(g
        .params
        .iter()
        .all(|p| p.name != "conv1.bias" && p.name != "dense1.bias"));
    let bn: Vec<&str> = g
        .params
        .iter()
        .filter(|p| p.name.starts_with("batchnorm1."))
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        bn,
        [
            "batchnorm1.weight",
            "batchnorm1.bias",
            "batchnorm1.running_mean",
            "batchnorm1.running_var"
        ]
    );
    let Op::BatchNorm(b) = &g.nodes[2].op else {
        panic!("not batchnorm")
    };
    assert_eq!((b.eps, b.momentum), (0.001, 0.2));
}

#[test]
fn train_section_is_validated_with_defaults() {
    let g = load("network n { input [4]\n dense 2\n train { data = \"data/x.npz\"; optimizer = adam(betas=(0.8, 0.99)); loss = mse; init = xavier; epochs = 3 } }");
    let t = g.train.expect("a train section");
    assert_eq!(t.data, DataSource::Path("data/x.npz".into()));
    assert_eq!(
        t.optimizer,
        Optimizer::Adam {
            lr: 0.001,
            betas: (0.8, 0.99),
            eps: 1e-8,
            weight_decay: 0.0
        }
    );
    assert_eq!(
        (t.loss, t.init, t.epochs, t.batch),
        (Loss::Mse, Init::Xavier, 3, 256)
    );
    let g = load("network n { input [4]\n dense 2\n train { data = fashion-mnist; optimizer = sgd(0.5, momentum=0.9) } }");
    let t = g.train.expect("a train section");
    assert_eq!(t.data, DataSource::FashionMnist);
    assert_eq!(
        t.optimizer,
        Optimizer::Sgd {
            lr: 0.5,
            momentum: 0.9,
            weight_decay: 0.0
        }
    );
}

#[test]
fn use_loads_blocks_relative_to_the_file() {
    let dir = std::env::temp_dir().join(format!("cnnc-use-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::write(
        dir.join("lib/blocks.cnn"),
        "use \"more.cnn\"\nblock pair(c) { twice(c) }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("lib/more.cnn"),
        "block twice(c) { conv c kernel=1; conv c kernel=1 }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("main.cnn"),
        "use \"lib/blocks.cnn\"\nuse \"lib/more.cnn\"\nnetwork n { input [2, 4, 4]\n pair(3) }\n",
    )
    .unwrap();
    let mut sources = SourceMap::default();
    let graphs = cnnc::load_file(&dir.join("main.cnn"), &mut sources).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(graphs.len(), 1);
    assert_eq!(
        param_shape(&graphs[0], "pair1.twice1.conv2.weight"),
        [3, 3, 1, 1]
    );
}

#[test]
fn every_network_of_a_file_is_built_in_order() {
    let mut sources = SourceMap::default();
    let graphs = cnnc::load_str(
        "t.cnn",
        "network a { input [1]\n relu }\nnetwork b { input [2]\n dense 3 }",
        &mut sources,
    )
    .unwrap();
    let names: Vec<&str> = graphs.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}

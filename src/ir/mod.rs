//! The IR: a network fully expanded into a graph of ops with resolved hyper-parameters.
//!
//! - [`Graph`] holds [`Node`]s in a `Vec`; a [`NodeId`] indexes it. Nodes are only appended,
//!   and every input of a node has a smaller id, so index order is a topological order.
//! - Every node has its output [`Shape`] *without* the batch axis (`[C, *spatial]` or `[F]`),
//!   its source [`Span`], and its stable dotted path (`inception3.branch2.conv1`).
//! - Every learned tensor or buffer is a [`Param`] in `Graph::params`, in network order, with the
//!   name and PyTorch layout of LANGUAGE.md. Ops refer to them by [`ParamId`].
//! - Blocks, `repeat`, `residual` and `let` do not exist here: `ir::build` expands them.
//! - Shapes are inferred and checked when a node is appended (`ir::shape`), so an ill-shaped
//!   graph cannot be built. Parameter counts and multiply-adds are computed once, in
//!   `ir::params`, and every later stage reads them from here.
//!
//! Losses are not nodes: the network's output node feeds the loss chosen by training
//! (`TrainConfig::loss`).

pub mod args;
pub mod build;
pub mod eval;
pub mod layer;
pub mod names;
pub mod params;
pub mod print;
pub mod shape;
pub mod train;
pub mod verify;

use crate::span::Span;

/// Index of a node in [`Graph::nodes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// Index of a parameter or buffer in [`Graph::params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub u32);

/// A shape without the batch axis: `[C, *spatial]` for feature maps, `[F]` for vectors.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    /// Number of elements per image.
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    /// Channels (the first axis).
    pub fn channels(&self) -> usize {
        self.0[0]
    }
    /// The spatial axes (everything after channels).
    pub fn spatial(&self) -> &[usize] {
        &self.0[1..]
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Display for Shape {
    /// `[6, 28, 28]`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

/// Convolution, `nn.ConvNd` semantics. All per-axis vectors have one entry per spatial axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    /// Zero padding `(before, after)` per spatial axis. Explicit padding is symmetric;
    /// `padding=same` can be asymmetric for even kernels (PyTorch puts the extra one after).
    pub padding: Vec<(usize, usize)>,
    pub dilation: Vec<usize>,
    pub groups: usize,
    /// `[out, in/groups, *kernel]`
    pub weight: ParamId,
    /// `[out]`
    pub bias: Option<ParamId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Pads with −∞; the gradient goes to the first maximum of each window (PyTorch).
    Max,
    /// Averages include the zero padding (`count_include_pad=True`, PyTorch's default).
    Avg,
}

/// Max or average pooling, `nn.MaxPoolNd` / `nn.AvgPoolNd` semantics (floor mode).
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub kind: PoolKind,
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    /// Symmetric padding per spatial axis; at most half the kernel.
    pub padding: Vec<usize>,
}

/// Fully connected layer, `nn.Linear`: `y = x W^T + b`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub in_features: usize,
    pub units: usize,
    /// `[units, in_features]`
    pub weight: ParamId,
    /// `[units]`
    pub bias: Option<ParamId>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Relu,
    LeakyRelu {
        slope: f32,
    },
    Sigmoid,
    Tanh,
    /// Over the channel axis (axis 1 with the batch), as `nn.Softmax(dim=1)`.
    Softmax,
}

/// Batch normalisation over the channel axis (`nn.BatchNormNd`): in training, batch statistics
/// (biased variance for normalising, unbiased for the running update); in inference, the
/// running statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    pub channels: usize,
    pub eps: f32,
    pub momentum: f32,
    /// `[C]`, trainable, initialised to 1.
    pub weight: ParamId,
    /// `[C]`, trainable, initialised to 0.
    pub bias: ParamId,
    /// `[C]` buffer, initialised to 0.
    pub running_mean: ParamId,
    /// `[C]` buffer, initialised to 1.
    pub running_var: ParamId,
}

/// An op with every hyper-parameter resolved. One match arm per op in each per-op concern
/// (shape, params, lowering, reference), so a new op makes the compiler list every place.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The network input, `[C, *spatial]`; node 0 of every graph.
    Input,
    Conv(Conv),
    Pool(Pool),
    /// Mean over all spatial axes: `[C, *S]` → `[C]`.
    GlobalAvgPool,
    /// `[C, *S]` → `[C·ΠS]`, row-major.
    Flatten,
    Dense(Dense),
    Activation(Activation),
    /// Zeroes with probability `p` and scales the rest by `1/(1−p)` in training; identity otherwise.
    Dropout {
        p: f32,
    },
    BatchNorm(BatchNorm),
    Identity,
    /// Joins its inputs along the channel axis, in input order.
    Concat,
    /// Element-wise sum of its inputs.
    Add,
}

impl Op {
    /// The op's name as written in `.cnn` (used in tables and dumps).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv(_) => "conv",
            Op::Pool(Pool {
                kind: PoolKind::Max,
                ..
            }) => "maxpool",
            Op::Pool(Pool {
                kind: PoolKind::Avg,
                ..
            }) => "avgpool",
            Op::GlobalAvgPool => "global_avgpool",
            Op::Flatten => "flatten",
            Op::Dense(_) => "dense",
            Op::Activation(Activation::Relu) => "relu",
            Op::Activation(Activation::LeakyRelu { .. }) => "leaky_relu",
            Op::Activation(Activation::Sigmoid) => "sigmoid",
            Op::Activation(Activation::Tanh) => "tanh",
            Op::Activation(Activation::Softmax) => "softmax",
            Op::Dropout { .. } => "dropout",
            Op::BatchNorm(_) => "batchnorm",
            Op::Identity => "identity",
            Op::Concat => "concat",
            Op::Add => "add",
        }
    }
}

/// One value of the graph: the op that computes it, its inputs, its shape, where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    /// Output shape without the batch axis.
    pub shape: Shape,
    /// The statement that produced this node (for `concat`/`add`, the whole construct).
    pub span: Span,
    /// Stable dotted path, e.g. `inception1.branch2.conv1`; parameter names extend it.
    pub name: String,
    /// An activation applied to the op's result inside the op's own kernel: the node's value
    /// is the activated one. `None` from the builder; set only by `passes::fuse`.
    pub epilogue: Option<Activation>,
    /// A batchnorm whose inference runs inside its producing convolution's kernel, with the
    /// weights and bias scaled by its running statistics (training is unchanged). `false` from
    /// the builder; set only by `passes::fold`.
    pub folded: bool,
}

/// What a [`Param`] is, which fixes its initialisation and whether the optimiser updates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Weight,
    Bias,
    RunningMean,
    RunningVar,
}

impl ParamKind {
    /// Trainable parameters get gradients; running statistics are buffers.
    pub fn trainable(self) -> bool {
        matches!(self, ParamKind::Weight | ParamKind::Bias)
    }
    /// The last component of the parameter's name.
    pub fn suffix(self) -> &'static str {
        match self {
            ParamKind::Weight => "weight",
            ParamKind::Bias => "bias",
            ParamKind::RunningMean => "running_mean",
            ParamKind::RunningVar => "running_var",
        }
    }
}

/// A learned tensor or buffer, with its stable name and PyTorch layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// `<node name>.<kind suffix>`, e.g. `conv1.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    /// The node that owns it.
    pub node: NodeId,
}

impl Param {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One network, fully expanded and shape-checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// The network's name.
    pub name: String,
    pub nodes: Vec<Node>,
    pub params: Vec<Param>,
    /// The node whose value is the network's output (the last statement).
    pub output: NodeId,
    /// The `train` section, validated, if the network has one.
    pub train: Option<TrainConfig>,
    /// The span of the `network NAME` header.
    pub span: Span,
}

impl Graph {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }
    pub fn param(&self, id: ParamId) -> &Param {
        &self.params[id.0 as usize]
    }
    /// The input node (always node 0).
    pub fn input(&self) -> &Node {
        &self.nodes[0]
    }
    pub fn output_shape(&self) -> &Shape {
        &self.node(self.output).shape
    }
    /// Ids of all nodes in topological (index) order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len() as u32).map(NodeId)
    }
}

/// Where training data comes from (`data = ...` in `train`, or `--data`).
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    Mnist,
    FashionMnist,
    /// A folder of IDX files or an `.npz` file; relative paths are relative to the `.cnn` file.
    Path(String),
    Synthetic,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    /// `torch.optim.SGD` semantics (momentum buffer starts at the first gradient).
    Sgd {
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    },
    /// `torch.optim.Adam` semantics (L2 weight decay added to the gradient, not AdamW).
    Adam {
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Softmax cross-entropy with integer labels, mean over the batch (`nn.CrossEntropyLoss`).
    CrossEntropy,
    /// Mean squared error over all elements (`nn.MSELoss`), targets of the output's shape.
    Mse,
}

/// The `train { ... }` section, validated. Every field has the documented default.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Default: synthetic.
    pub data: DataSource,
    /// Default 10.
    pub epochs: usize,
    /// Default 256.
    pub batch: usize,
    /// Default `sgd(lr=0.1)`.
    pub optimizer: Optimizer,
    /// Default cross-entropy.
    pub loss: Loss,
    /// Default 0.
    pub seed: u64,
    /// Default [`Init::PyTorch`]; `init = xavier` is d2l's `init_cnn` (an extension).
    pub init: Init,
    /// Default [`Schedule::Constant`]; an extension, like `init`.
    pub schedule: Schedule,
}

/// How the learning rate changes from epoch to epoch (`schedule = ...` in `train`, an
/// extension of LANGUAGE.md): `torch.optim.lr_scheduler`, stepped once per epoch.
/// `runtime::schedule` computes the rates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// The optimiser's `lr` in every epoch.
    Constant,
    /// `StepLR(step_size=every, gamma=gamma)`: the rate is multiplied by `gamma` after every
    /// `every` epochs.
    Step { every: usize, gamma: f32 },
    /// `CosineAnnealingLR(T_max=epochs, eta_min=min_lr)`: from `lr` down towards `min_lr` on
    /// half a cosine over the run's epochs.
    Cosine { min_lr: f32 },
}

/// How `cnnc init` and a fresh training run initialise weights (biases and batchnorm are
/// always PyTorch's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// Each layer's `reset_parameters()`: weights and biases U(±1/√fan_in).
    PyTorch,
    /// `nn.init.xavier_uniform_` on conv and dense weights, as d2l's LeNet recipe.
    Xavier,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: DataSource::Synthetic,
            epochs: 10,
            batch: 256,
            optimizer: Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.0,
                weight_decay: 0.0,
            },
            loss: Loss::CrossEntropy,
            seed: 0,
            init: Init::PyTorch,
            schedule: Schedule::Constant,
        }
    }
}

//! The plan: every buffer and kernel of a network at one batch size, and the order in which
//! inference, a training forward pass, the loss and the backward pass run them.
//!
//! Buffers hold `f32`s, activations batch-first (`[N, C, *S]`, NCHW). Flatten and identity
//! alias their input's value and gradient buffers, so they have no kernel. Every gradient
//! of a node is *accumulated* by its consumers (a node feeding a `concat` and a residual
//! `add` gets the sum), so the backward pass zeroes each gradient buffer before its first
//! use, except the output's, which the loss kernel stores. Only nodes with a trainable parameter at or
//! before them get a gradient (never the input, nor a pooling of it), so kernels that would
//! compute any other gradient are left out. Parameter gradients are stored whole by the one
//! kernel of their layer.
//!
//! Buffers the runtime fills before running a schedule: `Input`, `Params` (loaded or
//! initialised, updated by the optimiser from `ParamGrad`s), `Labels` or `Target`, and for
//! `train_forward` every dropout `Mask` (each element 0, with probability `p`, or `1/(1 − p)`;
//! as `reference::dropout`). `train_forward` also updates batchnorm running statistics in their `Param` buffers.
//!
//! A node with an epilogue (a fused activation, `passes::fuse`: conv, dense, batchnorm, add)
//! holds the activated value, and its gradient buffer the gradient with respect to it. Its own
//! kernels apply the epilogue where they store the value, and `dy·act'(y)` where they read the
//! gradient (conv in its `dy` transposition and padding copies, dense in one `dz` kernel).

use super::builder::{cst, ix, KernelBuilder, Scratch, ScratchSpec, Tensor};
use super::loops::{visit_uses, BufId, Kernel, Use};
use super::loss::LossTensors;
use super::{activation, conv, dense, dropout, join, loss, map, memory, norm, overwrite, pool};
use crate::ir::{BatchNorm, Graph, Loss, Node, NodeId, Op, ParamId};
use crate::passes::fold;

/// What a buffer of the plan holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferRole {
    /// The batch of inputs, `[N, *input]`; also the value of node 0.
    Input,
    /// Class indices as `f32`, `[N]` (cross-entropy).
    Labels,
    /// Targets of the output's shape, `[N, *output]` (MSE).
    Target,
    /// A node's output, `[N, *shape]`.
    Value(NodeId),
    /// The gradient of the mean loss with respect to a node's output.
    Grad(NodeId),
    Param(ParamId),
    ParamGrad(ParamId),
    /// Per-sample loss `[N]`; its mean is the loss.
    Loss,
    /// Dropout mask of a node, like its value; filled by the runtime.
    Mask(NodeId),
    /// Statistics kept from the training forward for backward: batchnorm `mean`, `invstd`.
    Saved(NodeId, &'static str),
    /// A layer's working copy (`conv1.padded_input`, `conv2.packed_weight`, `conv1.dy_t`,
    /// `dense1.dz`), filled by a kernel of the same schedule right before the kernel that reads
    /// it: the runtime never fills it.
    Scratch(NodeId, &'static str),
}

/// One buffer: a stable name for dumps and errors, its length in `f32`s, its role.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferDecl {
    pub name: String,
    pub len: usize,
    pub role: BufferRole,
}

/// Everything needed to run a network at one batch size; `BufId(i)` is `buffers[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub batch: usize,
    pub buffers: Vec<BufferDecl>,
    pub kernels: Vec<Kernel>,
    /// Kernel indices of the inference forward pass (dropout off, batchnorm running stats).
    pub infer: Vec<usize>,
    /// The training forward pass (dropout masks, batchnorm batch stats and running update).
    pub train_forward: Vec<usize>,
    /// Per-sample loss and the gradient of the output.
    pub loss: usize,
    /// Each node's gradients in reverse node order, each gradient buffer zeroed just before
    /// its first use.
    pub backward: Vec<usize>,
    /// The kernels whose results depend only on parameters (weight packing: see
    /// [`parameter_kernels`]), in index order. Their results stay valid until a parameter
    /// changes, so the runtime may skip them in `infer` while none has, provided their outputs
    /// keep their memory between runs (`memory::layout` holds them there when its budget
    /// allows; `memory::kept_over` is the check).
    pub derived: Vec<usize>,
    /// The buffer of each node's value, by node index (aliases share).
    values: Vec<BufId>,
    /// The buffer of each node's gradient (`None` when no trainable parameter precedes it).
    grads: Vec<Option<BufId>>,
}

impl Plan {
    /// The buffer playing `role`, if the plan has one (a `Value` or `Grad` of an alias node is
    /// its input's buffer).
    pub fn buffer(&self, role: BufferRole) -> Option<BufId> {
        match role {
            BufferRole::Value(node) => self.values.get(node.0 as usize).copied(),
            BufferRole::Grad(node) => self.grads.get(node.0 as usize).copied().flatten(),
            _ => self
                .buffers
                .iter()
                .position(|b| b.role == role)
                .map(|i| BufId(i as u32)),
        }
    }
}

/// Lowers `graph` at batch size `batch` with the loss `loss`.
pub fn plan(graph: &Graph, batch: usize, loss: Loss) -> Plan {
    let table = Table::new(graph, batch, loss);
    let mut kernels = Vec::new();
    let mut push = |k: Kernel| {
        kernels.push(k);
        kernels.len() - 1
    };
    let (mut infer, mut train_forward) = (Vec::new(), Vec::new());
    for id in graph.node_ids() {
        match forward(&table, id) {
            Forward::Nothing => {}
            Forward::Same(ks) => {
                for k in ks {
                    let i = push(k);
                    infer.push(i);
                    train_forward.push(i);
                }
            }
            Forward::Modes {
                infer: ks,
                train: ts,
            } => {
                for k in ks {
                    infer.push(push(k));
                }
                for k in ts {
                    train_forward.push(push(k));
                }
            }
        }
    }
    let output_grad = table.grad(graph.output);
    let loss_kernel = loss::forward_backward(
        loss,
        &LossTensors {
            output: &table.value(graph.output),
            truth: &table.truth,
            loss: &table.loss,
            dy: output_grad.as_ref(),
        },
    );
    let loss = push(loss_kernel);
    // Zero every gradient buffer once (aliases share theirs), except the one the loss stored.
    let mut backward = Vec::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        let Some(grad) = table.grad(id) else { continue };
        if !aliases_input(&node.op) && Some(grad.buf) != output_grad.as_ref().map(|o| o.buf) {
            backward.push(push(zero(&format!("{}.zero_grad", node.name), &grad)));
        }
    }
    for id in (0..graph.nodes.len() as u32).rev().map(NodeId) {
        for k in backward_kernels(&table, id) {
            backward.push(push(k));
        }
    }
    // Each gradient is zeroed just before its first use, so that its memory can serve others
    // until then (`memory`).
    let backward = memory::sink_initialisers(&kernels, &backward);
    // ... and not at all when its first user writes all of it once (`overwrite`).
    let lens: Vec<usize> = table.decls.iter().map(|d| d.len).collect();
    let (backward, mut dropped) = overwrite::skip_zeroing(&mut kernels, &backward, &lens);
    // An element-wise map (an activation's gradient) stored by the kernel producing its input.
    let (backward, folded) = map::fold_maps(&mut kernels, &backward, &lens, &dropped);
    dropped.extend(folded);
    let renumber = remove_kernels(&mut kernels, &dropped);
    let renumbered = |sequence: Vec<usize>| sequence.into_iter().map(|k| renumber[k]).collect();
    let (infer, train_forward, backward): (Vec<usize>, Vec<usize>, Vec<usize>) = (
        renumbered(infer),
        renumbered(train_forward),
        renumbered(backward),
    );
    let loss = renumber[loss];
    let derived = parameter_kernels(&table.decls, &kernels);
    Plan {
        batch,
        buffers: table.decls,
        kernels,
        infer,
        train_forward,
        loss,
        backward,
        derived,
        values: table.values,
        grads: table.grads,
    }
}

/// The kernels that compute only from parameters: each reads nothing but `Param` buffers,
/// stores (never accumulates) only into `Scratch` buffers, and is the only kernel of the plan
/// that writes those buffers. Run twice on the same parameters, such a kernel stores the same
/// values, and nothing else can change them, so its outputs stay valid until a parameter is
/// written (by the optimiser, a load, or batchnorm's running statistics in `train_forward`).
/// Decided from what each kernel reads and writes, never from its name.
pub fn parameter_kernels(buffers: &[BufferDecl], kernels: &[Kernel]) -> Vec<usize> {
    let mut writers = vec![0usize; buffers.len()];
    let accesses: Vec<(Vec<BufId>, Vec<BufId>, bool)> = kernels
        .iter()
        .map(|kernel| {
            let (mut reads, mut writes, mut stores_only) = (Vec::new(), Vec::new(), true);
            visit_uses(&kernel.body, &mut |item| match item {
                Use::Load(b) => reads.push(b),
                Use::Store(b) => writes.push(b),
                Use::Accumulate(b) => {
                    reads.push(b);
                    writes.push(b);
                    stores_only = false;
                }
                Use::Local(_) => {}
            });
            writes.sort();
            writes.dedup();
            for b in &writes {
                writers[b.0 as usize] += 1;
            }
            (reads, writes, stores_only)
        })
        .collect();
    let role = |b: &BufId| buffers[b.0 as usize].role;
    // Grown to a fixed point: a kernel may also read what derived kernels wrote (the weights
    // of a batchnorm folded into a conv, `passes::fold`, then packed).
    let mut derived = vec![false; kernels.len()];
    let mut derived_output = vec![false; buffers.len()];
    loop {
        let mut grew = false;
        for (k, (reads, writes, stores_only)) in accesses.iter().enumerate() {
            let is_derived = !derived[k]
                && *stores_only
                && !reads.is_empty()
                && !writes.is_empty()
                && reads.iter().all(|b| {
                    matches!(role(b), BufferRole::Param(_)) || derived_output[b.0 as usize]
                })
                && writes.iter().all(|b| {
                    matches!(role(b), BufferRole::Scratch(..)) && writers[b.0 as usize] == 1
                });
            if is_derived {
                derived[k] = true;
                for b in writes {
                    derived_output[b.0 as usize] = true;
                }
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    (0..kernels.len()).filter(|&k| derived[k]).collect()
}

/// Removes the kernels at the indices `dropped` (which no sequence runs) and returns each old
/// index's new one.
fn remove_kernels(kernels: &mut Vec<Kernel>, dropped: &[usize]) -> Vec<usize> {
    let mut renumber = Vec::with_capacity(kernels.len());
    let mut next = 0;
    for k in 0..kernels.len() {
        renumber.push(next);
        if !dropped.contains(&k) {
            next += 1;
        }
    }
    let mut k = 0;
    kernels.retain(|_| {
        k += 1;
        !dropped.contains(&(k - 1))
    });
    renumber
}

/// Flatten and identity reuse their input's buffers (flatten is row-major, so it is free).
fn aliases_input(op: &Op) -> bool {
    matches!(op, Op::Flatten | Op::Identity)
}

/// The forward kernels of one node.
enum Forward {
    Nothing,
    /// The same kernels, in order, for inference and training.
    Same(Vec<Kernel>),
    /// Dropout and batchnorm behave differently in training, and so does a convolution with a
    /// batchnorm folded into it for inference (`passes::fold`).
    Modes {
        infer: Vec<Kernel>,
        train: Vec<Kernel>,
    },
}

impl Forward {
    fn one(kernel: Kernel) -> Forward {
        Forward::Same(vec![kernel])
    }
}

fn forward(t: &Table, id: NodeId) -> Forward {
    let node = t.graph.node(id);
    let name = node.name.as_str();
    let x = || t.value(node.inputs[0]);
    let y = t.value(id);
    match &node.op {
        Op::Input | Op::Flatten | Op::Identity => Forward::Nothing,
        Op::Conv(c) => {
            let (x, weight, bias) = (x(), t.param(c.weight), c.bias.map(|b| t.param(b)));
            let tensors = conv::ConvTensors {
                x: &x,
                weight: &weight,
                bias: bias.as_ref(),
                y: &y,
                scratch: t.scratch(id),
            };
            let train = conv::forward(name, c, &tensors, node.epilogue);
            match fold::folded_batchnorm(t.graph, id) {
                None => Forward::Same(train),
                Some(bn_id) => Forward::Modes {
                    infer: folded_conv(t, id, bn_id, &tensors),
                    train,
                },
            }
        }
        Op::Pool(p) => Forward::one(pool::forward(name, p, &x(), &y)),
        Op::GlobalAvgPool => Forward::one(pool::global_avg_forward(name, &x(), &y)),
        Op::Dense(d) => {
            let (x, weight, bias) = (x(), t.param(d.weight), d.bias.map(|b| t.param(b)));
            let tensors = dense::DenseTensors {
                x: &x,
                weight: &weight,
                bias: bias.as_ref(),
                y: &y,
                scratch: t.scratch(id),
            };
            Forward::Same(dense::forward(name, d, &tensors, node.epilogue))
        }
        Op::Activation(a) => Forward::one(activation::forward(name, *a, &x(), &y)),
        Op::Dropout { .. } => Forward::Modes {
            infer: vec![dropout::forward_infer(name, &x(), &y)],
            train: vec![dropout::forward_train(
                name,
                &x(),
                &t.extra(BufferRole::Mask(id), &y),
                &y,
            )],
        },
        Op::BatchNorm(bn) => {
            let tensors = NormParts::new(t, id, bn);
            // Folded: inference runs inside the convolution's kernels (`folded_conv`).
            let infer = match node.folded {
                true => Vec::new(),
                false => vec![norm::forward_infer(name, bn, &tensors.view())],
            };
            Forward::Modes {
                infer,
                train: vec![norm::forward_train(name, bn, &tensors.view())],
            }
        }
        Op::Concat => {
            let xs: Vec<Tensor> = node.inputs.iter().map(|&i| t.value(i)).collect();
            Forward::one(join::concat_forward(
                name,
                &xs.iter().collect::<Vec<_>>(),
                &y,
            ))
        }
        Op::Add => {
            let xs: Vec<Tensor> = node.inputs.iter().map(|&i| t.value(i)).collect();
            let xs: Vec<&Tensor> = xs.iter().collect();
            Forward::one(join::add_forward(name, &xs, &y, node.epilogue))
        }
    }
}

/// The inference kernels of convolution `conv` with batchnorm `bn_id` folded into it
/// (`passes::fold`): the scaled weights and bias, then the convolution (its padding copy and
/// packing included) on them, writing the batchnorm's output through the batchnorm's epilogue.
/// Named `<conv>.fold_batchnorm` and `<conv>.<kernel>_folded`.
fn folded_conv(
    t: &Table,
    conv_id: NodeId,
    bn_id: NodeId,
    unfolded: &conv::ConvTensors,
) -> Vec<Kernel> {
    let (node, bn_node) = (t.graph.node(conv_id), t.graph.node(bn_id));
    let (Op::Conv(c), Op::BatchNorm(bn)) = (&node.op, &bn_node.op) else {
        unreachable!("passes::fold folds a batchnorm into a conv")
    };
    let name = node.name.as_str();
    let scratch = t.scratch(conv_id);
    let (weight, bias) = (scratch.get("folded_weight"), scratch.get("folded_bias"));
    let parts = NormParts::new(t, bn_id, bn);
    let mut kernels = vec![norm::fold_into_conv(
        &format!("{name}.fold_batchnorm"),
        bn,
        &parts.view(),
        unfolded.weight,
        unfolded.bias,
        weight,
        bias,
    )];
    let y = t.value(bn_id);
    // The convolution's own scratch, but the folded weights packed apart from the unfolded
    // ones, so that each packing has one writer and stays derived (`parameter_kernels`).
    let folded_scratch = Scratch::new(
        [
            ("padded_input", "padded_input"),
            ("packed_weight", "packed_folded_weight"),
        ]
        .into_iter()
        .filter_map(|(name, buffer)| scratch.try_get(buffer).map(|t| (name, t.clone())))
        .collect(),
    );
    let tensors = conv::ConvTensors {
        x: unfolded.x,
        weight,
        bias: Some(bias),
        y: &y,
        scratch: &folded_scratch,
    };
    for mut k in conv::forward(name, c, &tensors, bn_node.epilogue) {
        k.name.push_str("_folded");
        kernels.push(k);
    }
    kernels
}

/// The node's backward kernels; `dy` is the gradient of its value (after its epilogue, which
/// the kernels reading `dy` apply).
fn backward_kernels(t: &Table, id: NodeId) -> Vec<Kernel> {
    let node = t.graph.node(id);
    let Some(dy) = t.grad(id) else {
        return Vec::new();
    };
    let name = node.name.as_str();
    let x = || t.value(node.inputs[0]);
    let dx = || t.grad(node.inputs[0]);
    let y = t.value(id);
    match &node.op {
        Op::Input | Op::Flatten | Op::Identity => Vec::new(),
        Op::Conv(c) => {
            let (x, weight, bias) = (x(), t.param(c.weight), c.bias.map(|b| t.param(b)));
            let tensors = conv::ConvTensors {
                x: &x,
                weight: &weight,
                bias: bias.as_ref(),
                y: &y,
                scratch: t.scratch(id),
            };
            let dbias = c.bias.map(|b| t.param_grad(b));
            let dw = t.param_grad(c.weight);
            let dx = dx();
            conv::backward(
                name,
                c,
                &tensors,
                &dy,
                dx.as_ref(),
                &dw,
                dbias.as_ref(),
                node.epilogue,
            )
        }
        Op::Pool(p) => dx()
            .map(|dx| pool::backward(name, p, &x(), &y, &dy, &dx))
            .into_iter()
            .collect(),
        Op::GlobalAvgPool => dx()
            .map(|dx| pool::global_avg_backward(name, &dy, &dx))
            .into_iter()
            .collect(),
        Op::Dense(d) => {
            let (x, weight, bias) = (x(), t.param(d.weight), d.bias.map(|b| t.param(b)));
            let tensors = dense::DenseTensors {
                x: &x,
                weight: &weight,
                bias: bias.as_ref(),
                y: &y,
                scratch: t.scratch(id),
            };
            let dbias = d.bias.map(|b| t.param_grad(b));
            let dw = t.param_grad(d.weight);
            let dx = dx();
            dense::backward(
                name,
                d,
                &tensors,
                &dy,
                dx.as_ref(),
                &dw,
                dbias.as_ref(),
                node.epilogue,
            )
        }
        Op::Activation(a) => dx()
            .map(|dx| activation::backward(name, *a, &x(), &y, &dy, &dx))
            .into_iter()
            .collect(),
        Op::Dropout { .. } => {
            let mask = t.extra(BufferRole::Mask(id), &y);
            dx().map(|dx| dropout::backward(name, &mask, &dy, &dx))
                .into_iter()
                .collect()
        }
        Op::BatchNorm(bn) => {
            let parts = NormParts::new(t, id, bn);
            let (dw, db) = (t.param_grad(bn.weight), t.param_grad(bn.bias));
            vec![norm::backward(
                name,
                &parts.view(),
                &dy,
                dx().as_ref(),
                &dw,
                &db,
            )]
        }
        Op::Concat => {
            let xs: Vec<Tensor> = node.inputs.iter().map(|&i| t.value(i)).collect();
            let dxs: Vec<Option<Tensor>> = node.inputs.iter().map(|&i| t.grad(i)).collect();
            let dxs: Vec<Option<&Tensor>> = dxs.iter().map(Option::as_ref).collect();
            vec![join::concat_backward(
                name,
                &xs.iter().collect::<Vec<_>>(),
                &dy,
                &dxs,
            )]
        }
        Op::Add => {
            let dxs: Vec<Option<Tensor>> = node.inputs.iter().map(|&i| t.grad(i)).collect();
            let dxs: Vec<Option<&Tensor>> = dxs.iter().map(Option::as_ref).collect();
            vec![join::add_backward(name, &y, &dy, &dxs, node.epilogue)]
        }
    }
}

/// The owned tensors of a batchnorm node, lent out as `norm::NormTensors`.
struct NormParts {
    epilogue: Option<crate::ir::Activation>,
    x: Tensor,
    y: Tensor,
    params: [Tensor; 4],
    saved: [Tensor; 2],
}

impl NormParts {
    fn new(t: &Table, id: NodeId, bn: &BatchNorm) -> NormParts {
        let node = t.graph.node(id);
        let channels = Tensor::new(BufId(0), vec![bn.channels]);
        NormParts {
            epilogue: node.epilogue,
            x: t.value(node.inputs[0]),
            y: t.value(id),
            params: [bn.weight, bn.bias, bn.running_mean, bn.running_var].map(|p| t.param(p)),
            saved: ["mean", "invstd"].map(|what| t.extra(BufferRole::Saved(id, what), &channels)),
        }
    }

    fn view(&self) -> norm::NormTensors<'_> {
        let [weight, bias, running_mean, running_var] = &self.params;
        let [saved_mean, saved_invstd] = &self.saved;
        norm::NormTensors {
            epilogue: self.epilogue,
            x: &self.x,
            y: &self.y,
            weight,
            bias,
            running_mean,
            running_var,
            saved_mean,
            saved_invstd,
        }
    }
}

/// `t = 0`, parallel over the batch.
fn zero(name: &str, t: &Tensor) -> Kernel {
    let t = t.rows();
    let mut kb = KernelBuilder::new(name);
    let (n, e) = (kb.var(t.dims[0]), kb.var(t.dims[1]));
    let top = kb.parallel_for(
        n,
        vec![kb.for_(e, vec![t.store(&[ix(n), ix(e)], cst(0.0))])],
    );
    kb.finish(vec![top])
}

/// The buffer table while the plan is built, with tensor views of each buffer.
struct Table<'g> {
    graph: &'g Graph,
    batch: usize,
    decls: Vec<BufferDecl>,
    values: Vec<BufId>,
    grads: Vec<Option<BufId>>,
    params: Vec<BufId>,
    param_grads: Vec<Option<BufId>>,
    truth: Tensor,
    loss: Tensor,
    /// The scratch buffers of each node, by node index.
    scratch: Vec<Scratch>,
}

impl<'g> Table<'g> {
    /// Declares, in this order: the input; each node's value, mask and saved statistics; each
    /// parameter and its gradient; each node's gradient; labels or target; the loss; each
    /// node's scratch buffers.
    fn new(graph: &'g Graph, batch: usize, loss: Loss) -> Table<'g> {
        let mut t = Table {
            graph,
            batch,
            decls: Vec::new(),
            values: Vec::new(),
            grads: Vec::new(),
            params: Vec::new(),
            param_grads: Vec::new(),
            truth: Tensor::new(BufId(0), vec![batch]),
            loss: Tensor::new(BufId(0), vec![batch]),
            scratch: Vec::new(),
        };
        let per_sample = |node: &Node| batch * node.shape.numel();
        for id in graph.node_ids() {
            let node = graph.node(id);
            let value = match &node.op {
                Op::Input => t.add("input".into(), per_sample(node), BufferRole::Input),
                op if aliases_input(op) => t.values[node.inputs[0].0 as usize],
                _ => t.add(
                    format!("{}.value", node.name),
                    per_sample(node),
                    BufferRole::Value(id),
                ),
            };
            t.values.push(value);
            match &node.op {
                Op::Dropout { .. } => {
                    t.add(
                        format!("{}.mask", node.name),
                        per_sample(node),
                        BufferRole::Mask(id),
                    );
                }
                Op::BatchNorm(bn) => {
                    for what in ["mean", "invstd"] {
                        let role = BufferRole::Saved(id, what);
                        t.add(format!("{}.saved_{what}", node.name), bn.channels, role);
                    }
                }
                _ => {}
            }
        }
        for (i, param) in graph.params.iter().enumerate() {
            let id = ParamId(i as u32);
            let buf = t.add(param.name.clone(), param.numel(), BufferRole::Param(id));
            t.params.push(buf);
        }
        for (i, param) in graph.params.iter().enumerate() {
            let id = ParamId(i as u32);
            let grad = param.kind.trainable().then(|| {
                t.add(
                    format!("{}.grad", param.name),
                    param.numel(),
                    BufferRole::ParamGrad(id),
                )
            });
            t.param_grads.push(grad);
        }
        let has_trainable = |id: NodeId| {
            graph
                .params
                .iter()
                .any(|p| p.node == id && p.kind.trainable())
        };
        for id in graph.node_ids() {
            let node = graph.node(id);
            let upstream_learns = node.inputs.iter().any(|i| t.grads[i.0 as usize].is_some());
            let grad = match &node.op {
                _ if !upstream_learns && !has_trainable(id) => None,
                op if aliases_input(op) => t.grads[node.inputs[0].0 as usize],
                _ => Some(t.add(
                    format!("{}.grad", node.name),
                    per_sample(node),
                    BufferRole::Grad(id),
                )),
            };
            t.grads.push(grad);
        }
        let truth = match loss {
            Loss::CrossEntropy => (
                t.add("labels".into(), batch, BufferRole::Labels),
                vec![batch],
            ),
            Loss::Mse => {
                let output = graph.node(graph.output);
                let dims = [vec![batch], output.shape.0.clone()].concat();
                (
                    t.add("target".into(), per_sample(output), BufferRole::Target),
                    dims,
                )
            }
        };
        t.truth = Tensor::new(truth.0, truth.1);
        t.loss = Tensor::new(t.add("loss".into(), batch, BufferRole::Loss), vec![batch]);
        for id in graph.node_ids() {
            let scratch = t.declare_scratch(id);
            t.scratch.push(scratch);
        }
        t
    }

    /// Declares the scratch buffers the lowering of node `id` asks for (conv and dense).
    fn declare_scratch(&mut self, id: NodeId) -> Scratch {
        let graph = self.graph;
        let node = graph.node(id);
        let has_gradient = self.grads[id.0 as usize].is_some();
        let has_input_gradient = node
            .inputs
            .first()
            .is_some_and(|i| self.grads[i.0 as usize].is_some());
        let specs = match &node.op {
            Op::Conv(c) => {
                let (x, y) = (self.value(node.inputs[0]), self.value(id));
                let mut specs = conv::scratch(c, &x, &y, has_gradient, has_input_gradient);
                if fold::folded_batchnorm(graph, id).is_some() {
                    let weight = graph.params[c.weight.0 as usize].shape.clone();
                    if let Some(packed) = specs.iter().find(|s| s.name == "packed_weight") {
                        let dims = packed.dims.clone();
                        specs.push(ScratchSpec {
                            name: "packed_folded_weight",
                            dims,
                        });
                    }
                    specs.push(ScratchSpec {
                        name: "folded_weight",
                        dims: weight,
                    });
                    specs.push(ScratchSpec {
                        name: "folded_bias",
                        dims: vec![c.out_channels],
                    });
                }
                specs
            }
            Op::Dense(d) => {
                dense::scratch(d, &self.value(node.inputs[0]), has_gradient, node.epilogue)
            }
            _ => Vec::new(),
        };
        let name = node.name.clone();
        Scratch::new(
            specs
                .into_iter()
                .map(|spec| {
                    let len = spec.dims.iter().product();
                    let role = BufferRole::Scratch(id, spec.name);
                    let buf = self.add(format!("{name}.{}", spec.name), len, role);
                    (spec.name, Tensor::new(buf, spec.dims))
                })
                .collect(),
        )
    }

    fn scratch(&self, id: NodeId) -> &Scratch {
        &self.scratch[id.0 as usize]
    }

    fn add(&mut self, name: String, len: usize, role: BufferRole) -> BufId {
        self.decls.push(BufferDecl { name, len, role });
        BufId(self.decls.len() as u32 - 1)
    }

    fn activation_dims(&self, id: NodeId) -> Vec<usize> {
        [vec![self.batch], self.graph.node(id).shape.0.clone()].concat()
    }

    fn value(&self, id: NodeId) -> Tensor {
        Tensor::new(self.values[id.0 as usize], self.activation_dims(id))
    }

    fn grad(&self, id: NodeId) -> Option<Tensor> {
        self.grads[id.0 as usize].map(|buf| Tensor::new(buf, self.activation_dims(id)))
    }

    fn param(&self, id: ParamId) -> Tensor {
        Tensor::new(
            self.params[id.0 as usize],
            self.graph.param(id).shape.clone(),
        )
    }

    fn param_grad(&self, id: ParamId) -> Tensor {
        let buf = self.param_grads[id.0 as usize].expect("trainable parameters have gradients");
        Tensor::new(buf, self.graph.param(id).shape.clone())
    }

    /// The buffer declared for `role` (a mask, saved statistics, scratch), shaped like `like`.
    fn extra(&self, role: BufferRole, like: &Tensor) -> Tensor {
        let index = self
            .decls
            .iter()
            .position(|d| d.role == role)
            .expect("masks, saved statistics and scratch are declared with their node");
        Tensor::new(BufId(index as u32), like.dims.clone())
    }
}

//! AST → [`Graph`]: blocks are called, `repeat` unrolled, `residual` desugared to `add`, `let`
//! evaluated, and every node named (`ir::names`) and shape-checked as it is appended. Block
//! calls (arguments, recursion and depth checks, the call's naming scope) are in
//! `build/call.rs`.

mod call;

use std::collections::HashMap;

use super::eval::{defined_twice, eval, eval_args, expect_int, Scope};
use super::layer::{self, InputSite, OPS};
use super::names::Naming;
use super::params;
use super::shape::{self, ShapeError};
use super::train::train_config;
use super::*;
use crate::diag::{self, did_you_mean, Code, Diagnostic};
use crate::limits::{MAX_ELEMENTS, MAX_EXPANSION_STEPS, MAX_NODES, MAX_PARAMS};
use crate::syntax::ast::{BlockDef, Branch, Ident, Item, JoinKind, NetworkDef, Stmt, StmtKind};
use crate::syntax::load::Program;

/// Every block visible to a network, by name.
pub type Blocks<'a> = HashMap<&'a str, &'a BlockDef>;

/// Builds every network of the main file; blocks come from the prelude, the `use`d files and
/// the main file (a user block may shadow a prelude block, not another user block).
pub fn build_program(program: &Program) -> diag::Result<Vec<Graph>> {
    let mut blocks: Blocks = HashMap::new();
    for item in &program.prelude.items {
        if let Item::Block(b) = item {
            blocks.insert(&b.name.name, b);
        }
    }
    let mut user: HashMap<&str, Span> = HashMap::new();
    let mut errors = Vec::new();
    for file in program.used.iter().chain([&program.main]) {
        for item in &file.items {
            let Item::Block(b) = item else { continue };
            if OPS.contains(&b.name.name.as_str()) {
                errors.push(
                    Diagnostic::error(
                        Code::DuplicateDefinition,
                        format!(
                            "a block cannot be named `{}`, the name of an op",
                            b.name.name
                        ),
                    )
                    .label(b.name.span, "an op has this name"),
                );
                continue;
            } else if let Some(first) = user.insert(&b.name.name, b.name.span) {
                let what = format!("block `{}`", b.name.name);
                errors.push(defined_twice(&what, b.name.span, first));
            }
            blocks.insert(&b.name.name, b);
        }
    }
    let mut networks: HashMap<&str, Span> = HashMap::new();
    let mut graphs = Vec::new();
    for item in &program.main.items {
        let Item::Network(net) = item else { continue };
        if let Some(first) = networks.insert(&net.name.name, net.name.span) {
            let what = format!("network `{}`", net.name.name);
            errors.push(defined_twice(&what, net.name.span, first));
            continue;
        }
        match build_network(net, &blocks) {
            Ok(graph) => graphs.push(graph),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(graphs)
}

/// Expands and checks one network.
pub fn build_network(net: &NetworkDef, blocks: &Blocks) -> diag::Result<Graph> {
    let mut builder = Builder {
        blocks,
        graph: Graph {
            name: net.name.name.clone(),
            nodes: Vec::new(),
            params: Vec::new(),
            output: NodeId(0),
            train: None,
            span: net.name.span,
        },
        steps: 0,
        calls: Vec::new(),
        train_span: None,
        param_total: 0,
    };
    let mut scope = Scope::new();
    let mut naming = Naming::root();
    // `let`s may come before `input`; the first other statement must be `input`.
    let lets = net
        .body
        .iter()
        .take_while(|s| matches!(s.kind, StmtKind::Let { .. }))
        .count();
    builder.body(&net.body[..lets], NodeId(0), &mut scope, &mut naming, true)?;
    let Some(first) = net.body.get(lets) else {
        return Err(vec![missing_input(
            net.name.span,
            "this network has no `input` statement",
        )]);
    };
    let StmtKind::Input { dims } = &first.kind else {
        return Err(vec![missing_input(
            first.span,
            "the first statement of a network must be `input`",
        )
        .label(net.name.span, "in this network")]);
    };
    if dims.len() > 4 {
        return Err(vec![Diagnostic::error(Code::WrongRank, format!("`input` has {} axes, but at most 4 are supported ([channels] and up to 3 spatial axes)", dims.len()))
            .label(first.span, "too many axes")]);
    }
    let shape = dims
        .iter()
        .map(|d| {
            layer::size(
                expect_int(&eval(d, &scope)?, d.span, &scope)?,
                "input",
                d.span,
                true,
            )
        })
        .collect::<diag::Result<Vec<_>>>()?;
    if shape::checked_numel(&shape).is_none_or(|n| n > MAX_ELEMENTS) {
        return Err(vec![too_large(
            first.span,
            format!("the input has more than {MAX_ELEMENTS} elements per image"),
        )]);
    }
    let name = first
        .label
        .as_ref()
        .map_or("input", |l| l.name.as_str())
        .to_string();
    naming.reserve(&name, first.span);
    let input = builder.push(Op::Input, vec![], Shape(shape), first.span, name, vec![])?;
    let output = builder.body(&net.body[lets + 1..], input, &mut scope, &mut naming, true)?;
    builder.graph.output = output;
    Ok(builder.graph)
}

fn missing_input(span: Span, text: &str) -> Diagnostic {
    Diagnostic::error(Code::MissingInput, text.to_string())
        .label(span, "expected `input [channels, ...]` here")
        .help("start the network with its input shape, e.g. `input [1, 28, 28]`")
}

fn too_large(span: Span, message: String) -> Diagnostic {
    Diagnostic::error(Code::TooLarge, message).label(span, "passes a limit")
}

struct Builder<'a> {
    blocks: &'a Blocks<'a>,
    graph: Graph,
    /// Statements and repeat iterations expanded so far (bounded by [`MAX_EXPANSION_STEPS`]).
    steps: usize,
    /// The block calls being expanded, innermost last, for recursion and depth checks.
    calls: Vec<&'a str>,
    train_span: Option<Span>,
    param_total: usize,
}

impl<'a> Builder<'a> {
    /// Expands `stmts` starting from `current`; returns the last value.
    fn body(
        &mut self,
        stmts: &'a [Stmt],
        mut current: NodeId,
        scope: &mut Scope,
        naming: &mut Naming,
        top: bool,
    ) -> diag::Result<NodeId> {
        for stmt in stmts {
            self.step(stmt.span)?;
            if let (Some(label), false) = (
                &stmt.label,
                matches!(
                    stmt.kind,
                    StmtKind::Layer { .. } | StmtKind::Join { .. } | StmtKind::Residual { .. }
                ),
            ) {
                return Err(vec![Diagnostic::error(
                    Code::Syntax,
                    "only layers, block calls, `concat`, `add` and `residual` can have a label",
                )
                .label(label.span, "this label names nothing")]);
            }
            current = match &stmt.kind {
                StmtKind::Let { name, value } => {
                    let value = eval(value, scope)?;
                    scope.bind(&name.name, value, name.span)?;
                    current
                }
                StmtKind::Input { .. } => {
                    return Err(vec![Diagnostic::error(
                        Code::DuplicateDefinition,
                        "`input` may appear only once, as the first statement of a network",
                    )
                    .label(stmt.span, "a second `input`")]);
                }
                StmtKind::Train { settings } => {
                    if !top {
                        return Err(vec![Diagnostic::error(
                            Code::BadTrainSetting,
                            "a `train` section belongs at the top level of a network",
                        )
                        .label(stmt.span, "not at the top level")]);
                    }
                    if let Some(first) = self.train_span.replace(stmt.span) {
                        return Err(vec![Diagnostic::error(
                            Code::DuplicateDefinition,
                            "a network has at most one `train` section",
                        )
                        .label(stmt.span, "a second `train` section")
                        .label(first, "the first one")]);
                    }
                    self.graph.train = Some(train_config(settings, scope)?);
                    current
                }
                StmtKind::Repeat { count, body } => {
                    let times = expect_int(&eval(count, scope)?, count.span, scope)?;
                    if times < 0 {
                        return Err(vec![Diagnostic::error(
                            Code::NonPositive,
                            format!("`repeat` count must be zero or more, found {times}"),
                        )
                        .label(count.span, "negative")]);
                    }
                    for _ in 0..times {
                        self.step(count.span)?;
                        scope.push();
                        current = self.body(body, current, scope, naming, false)?;
                        scope.pop();
                    }
                    current
                }
                StmtKind::Residual { body } => {
                    let name = naming.claim(stmt.label.as_ref(), "residual", stmt.span)?;
                    scope.push();
                    let out = self.body(body, current, scope, &mut naming.child(&name), false)?;
                    scope.pop();
                    self.join(
                        Op::Add,
                        &[out, current],
                        &[stmt.span, stmt.span],
                        stmt.span,
                        name,
                    )?
                }
                StmtKind::Join { kind, branches } => {
                    self.join_branches(*kind, branches, stmt, current, scope, naming)?
                }
                StmtKind::Layer {
                    name,
                    args,
                    parenthesized,
                } => {
                    let args = eval_args(args, scope)?;
                    if let Some(block) = self.blocks.get(name.name.as_str()) {
                        self.call(block, name, args, stmt, current, naming)?
                    } else if OPS.contains(&name.name.as_str()) {
                        let input = self.graph.node(current);
                        let site = InputSite {
                            shape: &input.shape,
                            span: input.span,
                            is_network_input: current == NodeId(0),
                        };
                        let resolved = layer::resolve(
                            name,
                            args,
                            &site,
                            self.graph.params.len() as u32,
                            scope,
                            stmt.span,
                        )?;
                        let node_name = naming.claim(stmt.label.as_ref(), &name.name, stmt.span)?;
                        self.push(
                            resolved.op,
                            vec![current],
                            resolved.shape,
                            stmt.span,
                            node_name,
                            resolved.params,
                        )?
                    } else {
                        return Err(vec![self.unknown(name, *parenthesized)]);
                    }
                }
            };
        }
        Ok(current)
    }

    fn step(&mut self, span: Span) -> diag::Result<()> {
        self.steps += 1;
        if self.steps > MAX_EXPANSION_STEPS {
            return Err(vec![too_large(
                span,
                format!("expanding this network takes more than {MAX_EXPANSION_STEPS} steps"),
            )
            .note("`repeat` counts multiply; the limit keeps cnnc from hanging")]);
        }
        Ok(())
    }

    fn unknown(&self, name: &Ident, parenthesized: bool) -> Diagnostic {
        let candidates = OPS.iter().copied().chain(self.blocks.keys().copied());
        let help = did_you_mean(&name.name, candidates);
        let d = if parenthesized {
            Diagnostic::error(
                Code::UnknownBlock,
                format!("no block named `{}`", name.name),
            )
            .label(name.span, "not defined")
        } else {
            Diagnostic::error(Code::UnknownOp, format!("unknown op `{}`", name.name))
                .label(name.span, "not an op or a block")
        };
        match help {
            Some(h) => d.help(h),
            None => d,
        }
    }

    /// `concat { branch .. }` / `add { branch .. }`.
    fn join_branches(
        &mut self,
        kind: JoinKind,
        branches: &'a [Branch],
        stmt: &Stmt,
        current: NodeId,
        scope: &mut Scope,
        naming: &mut Naming,
    ) -> diag::Result<NodeId> {
        let name = naming.claim(stmt.label.as_ref(), kind.keyword(), stmt.span)?;
        let mut outputs = Vec::new();
        for branch in branches {
            let branch_name = naming.claim(branch.label.as_ref(), "branch", branch.span)?;
            scope.push();
            outputs.push(self.body(
                &branch.body,
                current,
                scope,
                &mut naming.child(&branch_name),
                false,
            )?);
            scope.pop();
        }
        let spans: Vec<Span> = branches.iter().map(|b| b.span).collect();
        let op = match kind {
            JoinKind::Concat => Op::Concat,
            JoinKind::Add => Op::Add,
        };
        self.join(op, &outputs, &spans, stmt.span, name)
    }

    /// Appends a `Concat`/`Add` of `inputs` (made by the branches at `branch_spans`).
    fn join(
        &mut self,
        op: Op,
        inputs: &[NodeId],
        branch_spans: &[Span],
        span: Span,
        name: String,
    ) -> diag::Result<NodeId> {
        let shapes: Vec<&Shape> = inputs.iter().map(|&i| &self.graph.node(i).shape).collect();
        match shape::infer(&op, &shapes) {
            Ok(shape) => self.push(op, inputs.to_vec(), shape, span, name, vec![]),
            Err(ShapeError::BranchMismatch {
                index,
                first,
                other,
            }) => {
                let (what, rule) = match op {
                    Op::Concat => ("concat", "spatial sizes must agree"),
                    _ => ("add", "shapes must agree"),
                };
                Err(vec![Diagnostic::error(
                    Code::BranchMismatch,
                    format!("the branches of `{what}` do not fit: {first} and {other}"),
                )
                .label(
                    branch_spans.get(index).copied().unwrap_or(span),
                    format!("this branch gives {other}"),
                )
                .label(
                    branch_spans.first().copied().unwrap_or(span),
                    format!("this branch gives {first}"),
                )
                .note(format!("in `{what}`, {rule}"))])
            }
            Err(_) => Err(vec![too_large(
                span,
                format!("the output has more than {MAX_ELEMENTS} elements per image"),
            )]),
        }
    }

    /// Appends a node and its parameters, enforcing the limits.
    fn push(
        &mut self,
        op: Op,
        inputs: Vec<NodeId>,
        shape: Shape,
        span: Span,
        name: String,
        params: Vec<(ParamKind, Vec<usize>)>,
    ) -> diag::Result<NodeId> {
        if self.graph.nodes.len() >= MAX_NODES {
            return Err(vec![too_large(
                span,
                format!("the network has more than {MAX_NODES} layers after expansion"),
            )]);
        }
        let id = NodeId(self.graph.nodes.len() as u32);
        for (kind, param_shape) in params {
            let param_name = format!("{name}.{}", kind.suffix());
            let Some(numel) = shape::checked_numel(&param_shape).filter(|&n| n <= MAX_ELEMENTS)
            else {
                return Err(vec![too_large(
                    span,
                    format!(
                        "`{param_name}` {} has more than {MAX_ELEMENTS} elements",
                        Shape(param_shape)
                    ),
                )]);
            };
            self.param_total = self
                .param_total
                .checked_add(numel)
                .filter(|&t| t <= MAX_PARAMS)
                .ok_or_else(|| {
                    vec![too_large(
                        span,
                        format!("the parameters of this network pass the limit of {MAX_PARAMS}"),
                    )]
                })?;
            self.graph.params.push(Param {
                name: param_name,
                shape: param_shape,
                kind,
                node: id,
            });
        }
        if params::checked_macs(&op, &shape).is_none() {
            return Err(vec![too_large(
                span,
                "the multiply-adds of this layer overflow 64 bits".to_string(),
            )]);
        }
        self.graph.nodes.push(Node {
            op,
            inputs,
            shape,
            span,
            name,
            epilogue: None,
            folded: false,
        });
        Ok(id)
    }
}

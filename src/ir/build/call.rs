//! A call of a block: its arguments bound to the block's parameters (defaults evaluated in
//! the block's own scope), recursion and nesting depth refused, and the body expanded in the
//! call's naming scope (`inception1.branch2.conv1`).

use super::Builder;
use crate::diag::{self, Code, Diagnostic};
use crate::ir::args::bind;
use crate::ir::eval::{eval, Scope};
use crate::ir::names::Naming;
use crate::ir::NodeId;
use crate::limits::MAX_NESTING;
use crate::syntax::ast::{BlockDef, Ident, Stmt};

impl<'a> Builder<'a> {
    /// Expands a call of `block` with the evaluated `args`.
    pub(super) fn call(
        &mut self,
        block: &'a BlockDef,
        name: &Ident,
        args: Vec<crate::ir::args::EvalArg>,
        stmt: &Stmt,
        current: NodeId,
        naming: &mut Naming,
    ) -> diag::Result<NodeId> {
        if let Some(at) = self.calls.iter().position(|b| *b == block.name.name) {
            let chain: Vec<&str> = self.calls[at..]
                .iter()
                .copied()
                .chain([block.name.name.as_str()])
                .collect();
            return Err(vec![Diagnostic::error(
                Code::RecursiveBlock,
                format!("block `{}` calls itself", block.name.name),
            )
            .label(name.span, "recursive call")
            .label(block.name.span, "in this block")
            .note(format!("call chain: {}", chain.join(" → ")))]);
        }
        if self.calls.len() >= MAX_NESTING {
            return Err(vec![Diagnostic::error(
                Code::TooDeep,
                format!("block calls are nested more than {MAX_NESTING} deep"),
            )
            .label(name.span, "too deep")]);
        }
        let callee = format!("block `{}`", block.name.name);
        let params: Vec<&str> = block.params.iter().map(|p| p.name.name.as_str()).collect();
        let bound = bind(&callee, &params, params.len(), args)?;
        let mut scope = Scope::new();
        for (param, value) in block.params.iter().zip(bound) {
            let value = match (value, &param.default) {
                (Some((v, _)), _) => v,
                (None, Some(default)) => eval(default, &scope)?,
                (None, None) => {
                    return Err(crate::ir::args::missing(
                        &callee,
                        &param.name.name,
                        stmt.span,
                    ))
                }
            };
            scope.bind(&param.name.name, value, param.name.span)?;
        }
        let node_name = naming.claim(stmt.label.as_ref(), &block.name.name, stmt.span)?;
        self.calls.push(&block.name.name);
        let out = self.body(
            &block.body,
            current,
            &mut scope,
            &mut naming.child(&node_name),
            false,
        );
        self.calls.pop();
        // Point at the call too: the mistake may be in the block or in the arguments given.
        out.map_err(|errors| {
            errors
                .into_iter()
                .map(|d| d.label(name.span, format!("in this call of `{}`", block.name.name)))
                .collect()
        })
    }
}

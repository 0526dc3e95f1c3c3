//! One network compiled for the few batch sizes a run needs, sharing one set of parameters.
//!
//! An [`Engine`] is compiled for a single batch size, but an epoch of `n` samples in batches of
//! `b` ends with a partial batch of `n mod b` (kept, as PyTorch's `drop_last=False`), and the
//! test set has its own remainder. Each size gets its engine the first time it is asked for;
//! the parameters live in whichever engine ran last (the *holder*) and are copied to the next
//! one only when the size changes, which happens a few times per epoch.

use crate::ir::{Graph, Loss};
use crate::runtime::engine::{Engine, EngineError};

pub struct Engines<'g> {
    graph: &'g Graph,
    loss: Loss,
    threads: usize,
    engines: Vec<Engine>,
    /// Index in `engines` of the one holding the current parameters.
    holder: usize,
}

impl<'g> Engines<'g> {
    /// Compiles `graph` for `batch` samples and loads `params` (`Graph::params` order).
    pub fn new<V: AsRef<[f32]>>(
        graph: &'g Graph,
        loss: Loss,
        threads: usize,
        batch: usize,
        params: &[V],
    ) -> Result<Engines<'g>, EngineError> {
        let mut first = Engine::new(graph, batch, loss, threads)?;
        first.set_params(params)?;
        Ok(Engines {
            graph,
            loss,
            threads,
            engines: vec![first],
            holder: 0,
        })
    }

    /// The engine for batches of `batch` samples, compiled on first use, holding the current
    /// parameters. Whatever it does to them (a training step) is what later calls see.
    pub fn get(&mut self, batch: usize) -> Result<&mut Engine, EngineError> {
        let index = match self.engines.iter().position(|e| e.batch() == batch) {
            Some(index) => index,
            None => {
                let engine = Engine::new(self.graph, batch, self.loss, self.threads)?;
                self.engines.push(engine);
                self.engines.len() - 1
            }
        };
        if index != self.holder {
            let (from, to) = pair_mut(&mut self.engines, self.holder, index);
            to.set_params(&from.params())?;
            self.holder = index;
        }
        Ok(&mut self.engines[index])
    }

    /// The current parameter values, `Graph::params` order.
    pub fn params(&self) -> Vec<&[f32]> {
        self.engines[self.holder].params()
    }

    /// Seconds spent compiling so far, over all batch sizes.
    pub fn compile_seconds(&self) -> f64 {
        self.engines.iter().map(Engine::compile_seconds).sum()
    }

    /// Bytes of all engines' buffers.
    pub fn buffer_bytes(&self) -> usize {
        self.engines.iter().map(Engine::buffer_bytes).sum()
    }
}

/// `(&items[a], &mut items[b])` for `a != b`.
fn pair_mut<T>(items: &mut [T], a: usize, b: usize) -> (&T, &mut T) {
    if a < b {
        let (left, right) = items.split_at_mut(b);
        (&left[a], &mut right[0])
    } else {
        let (left, right) = items.split_at_mut(a);
        (&right[0], &mut left[b])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::SourceMap;

    fn tiny() -> Graph {
        let text = "network tiny { input [2, 4]; conv 3 kernel=3; flatten; dense 2 }";
        crate::load_str("tiny.cnn", text, &mut SourceMap::default())
            .expect("tiny checks")
            .remove(0)
    }

    /// Parameters set in one engine reach an engine of another size, and back.
    #[test]
    fn parameters_follow_the_batch_size() {
        let graph = tiny();
        let start: Vec<Vec<f32>> = graph
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| vec![i as f32 + 0.5; p.numel()])
            .collect();
        let mut engines = Engines::new(&graph, Loss::CrossEntropy, 1, 4, &start).unwrap();
        let changed: Vec<Vec<f32>> = start
            .iter()
            .map(|p| p.iter().map(|v| v * 2.0).collect())
            .collect();
        engines.get(3).unwrap().set_params(&changed).unwrap();
        let back: Vec<Vec<f32>> = engines
            .get(4)
            .unwrap()
            .params()
            .iter()
            .map(|p| p.to_vec())
            .collect();
        assert_eq!(back, changed);
        assert_eq!(engines.engines.len(), 2);
    }
}

//! What the MoE routers chose, recorded on request: the check that a reduced-precision run
//! (bf16 on a GPU) differs from f32 only by rounding needs to know where it routed tokens to
//! other experts, since there a logit moves by the logit scale itself. Off unless a caller on
//! this thread asks; then each router call (one layer, every token of a step) is kept in order.

use std::cell::RefCell;

/// One router call: a layer's routing of every token of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutedStep {
    /// Per token, the router's logits over every routed expert.
    pub logits: Vec<Vec<f32>>,
    /// Per token, the chosen experts in the router's order.
    pub chosen: Vec<Vec<usize>>,
}

thread_local! {
    static TRACE: RefCell<Option<Vec<RoutedStep>>> = const { RefCell::new(None) };
}

/// Runs `work` on this thread and returns what it returned with every router call it made.
/// For tests and checks: the model runs as usual, plus a copy of each router's logits.
pub fn trace_routing<R>(work: impl FnOnce() -> R) -> (R, Vec<RoutedStep>) {
    let outer = TRACE.with(|trace| trace.borrow_mut().replace(Vec::new()));
    let result = work();
    let steps = TRACE.with(|trace| std::mem::replace(&mut *trace.borrow_mut(), outer));
    (result, steps.unwrap_or_default())
}

/// Whether a trace is being recorded on this thread (so the router copies its logits).
pub(crate) fn tracing() -> bool {
    TRACE.with(|trace| trace.borrow().is_some())
}

pub(crate) fn record(step: RoutedStep) {
    TRACE.with(|trace| {
        if let Some(steps) = trace.borrow_mut().as_mut() {
            steps.push(step);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(expert: usize) -> RoutedStep {
        RoutedStep {
            logits: vec![vec![0.5, 1.5]],
            chosen: vec![vec![expert]],
        }
    }

    #[test]
    fn only_a_tracing_caller_records_and_traces_nest() {
        record(step(9));
        let ((), outer) = trace_routing(|| {
            assert!(tracing());
            record(step(0));
            let ((), inner) = trace_routing(|| record(step(1)));
            assert_eq!(inner, vec![step(1)]);
            record(step(2));
        });
        assert_eq!(outer, vec![step(0), step(2)]);
        assert!(!tracing());
    }
}

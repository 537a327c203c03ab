//! Running a model (float, simulated or integer) in tract with chosen tensors as outputs.
//!
//! Calibration and the per-layer report need intermediate activations: tract exposes any
//! named tensor once it is made a model output, and its optimiser keeps it intact.

use std::sync::Arc;

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use crate::error::QuantizeError;

fn tract_err(e: impl std::fmt::Display) -> QuantizeError {
    QuantizeError::Tract(format!("{e:#}"))
}

fn tract_err_dbg(e: TractError) -> QuantizeError {
    QuantizeError::Tract(format!("{e:#}"))
}

/// An output's shape and values.
pub type Shaped = (Vec<usize>, Vec<f32>);

/// An optimised tract plan for batch-1 inputs.
pub struct Engine {
    plan: Arc<TypedRunnableModel>,
    shape: Vec<usize>,
    outputs: Vec<String>,
}

/// The optimised typed model of `proto` for `shape`, with `outputs` (tensor names) as outputs
/// (the model's own outputs when empty).
pub fn optimized(
    proto: &ModelProto,
    shape: &[usize],
    outputs: &[String],
) -> Result<TypedModel, QuantizeError> {
    let mut model = tract_onnx::onnx()
        .model_for_proto_model(proto)
        .map_err(tract_err_dbg)?;
    if !outputs.is_empty() {
        model
            .select_outputs_by_name(outputs)
            .map_err(tract_err_dbg)?;
    }
    model
        .with_input_fact(0, f32::fact(shape).into())
        .and_then(|m| m.into_optimized())
        .map_err(tract_err_dbg)
}

/// Operator names and details of every node of an optimised model (to check which kernels
/// tract picked, e.g. `mmm_i32` integer matmuls).
pub fn describe(model: &TypedModel) -> Vec<(String, String)> {
    model
        .nodes()
        .iter()
        .map(|n| {
            (
                n.op.name().to_string(),
                n.op.info().unwrap_or_default().join("; "),
            )
        })
        .collect()
}

impl Engine {
    /// Loads `proto` for inputs of `shape`, reading `outputs` (model outputs when empty).
    pub fn new(
        proto: &ModelProto,
        shape: &[usize],
        outputs: &[String],
    ) -> Result<Self, QuantizeError> {
        let typed = optimized(proto, shape, outputs)?;
        let outputs = if outputs.is_empty() {
            typed
                .output_outlets()
                .map_err(tract_err)?
                .iter()
                .map(|&o| {
                    typed
                        .outlet_label(o)
                        .map_or_else(|| typed.node(o.node).name.clone(), str::to_string)
                })
                .collect()
        } else {
            outputs.to_vec()
        };
        let plan = typed.into_runnable().map_err(tract_err_dbg)?;
        Ok(Self {
            plan,
            shape: shape.to_vec(),
            outputs,
        })
    }

    /// Output names, in the order [`Engine::run`] returns them.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// Runs one input; every output converted to f32 (int8 tensors as their integer values).
    pub fn run(&self, input: &[f32]) -> Result<Vec<Vec<f32>>, QuantizeError> {
        Ok(self
            .run_shaped(input)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// [`Engine::run`] with each output's shape.
    pub fn run_shaped(&self, input: &[f32]) -> Result<Vec<Shaped>, QuantizeError> {
        let t = tract_ndarray::ArrayD::from_shape_vec(self.shape.clone(), input.to_vec())
            .map_err(tract_err)?;
        let out = self
            .plan
            .run(tvec!(Tensor::from(t).into()))
            .map_err(tract_err_dbg)?;
        out.iter()
            .map(|v| {
                let f = v.cast_to::<f32>().map_err(tract_err_dbg)?;
                let view = f.to_plain_array_view::<f32>().map_err(tract_err_dbg)?;
                Ok((view.shape().to_vec(), view.iter().copied().collect()))
            })
            .collect()
    }
}

//! The customer side's own rules below HTTP: how the links the daemon emails are signed and
//! checked (`links`). The pages are in `http/portal/`, the workflows they start in
//! `billing::portal`, their rows in `store::portal`.

pub mod links;

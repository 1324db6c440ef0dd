//! The errors of one derive, collected rather than returned at the first,
//! so that a user sees every mistake of an input in one build.

use std::fmt::Display;

use quote::ToTokens;

/// The mistakes found so far in one derive's input.
#[derive(Default)]
pub(crate) struct Errors {
    errors: Vec<syn::Error>,
}

impl Errors {
    /// Records an error and carries on.
    pub(crate) fn push(&mut self, error: syn::Error) {
        self.errors.push(error);
    }

    /// Records an error pointing at `tokens`.
    pub(crate) fn error_spanned_by(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// `Ok` if nothing was recorded, otherwise every recorded error as one
    /// `syn::Error` (each keeps its own span and becomes its own
    /// `compile_error!`).
    pub(crate) fn finish(self) -> syn::Result<()> {
        let mut errors = self.errors.into_iter();
        match errors.next() {
            None => Ok(()),
            Some(mut first) => {
                first.extend(errors);
                Err(first)
            }
        }
    }
}

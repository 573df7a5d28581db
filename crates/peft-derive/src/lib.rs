//! `#[derive(Adaptable)]` for peft-rs: generates the visitor that lets `peft_core::PeftModel` reach every
//! adaptable layer of a user's model.
//!
//! Every field is visited, in declaration order (keep it equal to the PyTorch module's registration
//! order so that same-seed initialisation matches PEFT). A field whose type does not implement
//! `peft_core::Adaptable` is a compile error — mark fields that hold no layers with `#[peft(skip)]`.
//! Works on structs with named or unnamed fields; generic type parameters get an `Adaptable` bound.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::{parse_macro_input, spanned::Spanned, Data, DeriveInput, Fields, Index};

/// Derives `peft_core::Adaptable` (see the crate docs).
#[proc_macro_derive(Adaptable, attributes(peft))]
pub fn derive_adaptable(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn is_skipped(attrs: &[syn::Attribute]) -> syn::Result<bool> {
    let mut skip = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("peft")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                skip = true;
                Ok(())
            } else {
                Err(meta.error("unknown peft attribute; expected `#[peft(skip)]`"))
            }
        })?;
    }
    Ok(skip)
}

fn expand(input: DeriveInput) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new(input.span(), "#[derive(Adaptable)] supports structs only"));
    };
    let mut accessors = Vec::new();
    match &data.fields {
        Fields::Named(fields) => {
            for f in &fields.named {
                if !is_skipped(&f.attrs)? {
                    let ident = f.ident.as_ref().ok_or_else(|| syn::Error::new(f.span(), "unnamed field"))?;
                    accessors.push(quote!(#ident));
                }
            }
        }
        Fields::Unnamed(fields) => {
            for (i, f) in fields.unnamed.iter().enumerate() {
                if !is_skipped(&f.attrs)? {
                    let idx = Index::from(i);
                    accessors.push(quote!(#idx));
                }
            }
        }
        Fields::Unit => {}
    }
    let mut generics = input.generics.clone();
    for tp in generics.type_params_mut() {
        tp.bounds.push(syn::parse_quote!(::peft_core::Adaptable));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::peft_core::Adaptable for #name #ty_generics #where_clause {
            fn visit_layers(&self, f: &mut dyn FnMut(&dyn ::peft_core::AdaptableLayer)) {
                #( ::peft_core::Adaptable::visit_layers(&self.#accessors, f); )*
            }
            fn visit_layers_mut(
                &mut self,
                f: &mut dyn FnMut(&mut dyn ::peft_core::AdaptableLayer) -> ::peft_core::Result<()>,
            ) -> ::peft_core::Result<()> {
                #( ::peft_core::Adaptable::visit_layers_mut(&mut self.#accessors, f)?; )*
                Ok(())
            }
        }
    })
}

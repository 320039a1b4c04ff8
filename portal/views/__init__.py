"""The portal's views, one module per area; each is thin: scope, form, service, template."""

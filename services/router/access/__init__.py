"""Who is calling the router: credentials, tenants, scopes and the audit trail."""

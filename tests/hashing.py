"""Password hashers for tests: MD5 for people's passwords (fast; never in production) and
the project's own client-secret hasher, which django-oauth-toolkit is configured to use."""

FAST_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", "accounts.hashers.ClientSecretHasher"]

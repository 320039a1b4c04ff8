"""The hasher for OAuth2 client secrets.

Client secrets are 128 random characters from django-oauth-toolkit's generator, far beyond
the reach of any guessing attack, so the million PBKDF2 iterations that protect human
passwords buy nothing for them; they would only cost about half a second of CPU on every
token request and every terminal registration, which an attacker could spend for us.
"""

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class ClientSecretHasher(PBKDF2PasswordHasher):
    algorithm = "pbkdf2_sha256_client_secret"
    iterations = 1_000

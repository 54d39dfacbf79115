"""What the tests share: the real daemon as a subprocess, a scriptable webhook receiver, a
real S3 server (moto), an API client, the store opened in-process, and one polling helper."""

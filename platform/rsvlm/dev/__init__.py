"""Local development services: the S3 endpoint, MLflow server and Ray head of tests, benches and ``make stack``."""

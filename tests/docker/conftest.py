"""The `docker` marker: tests that build the images and run docker-compose.yml in a real Docker engine."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "docker: builds the images and runs the docker-compose stack in a real Docker engine "
        "(skips with a one-line reason when no engine answers); select with -m docker",
    )

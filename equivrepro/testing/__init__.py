"""Reference tasks and models with known equivariance properties, for tests of any equivrepro tool."""

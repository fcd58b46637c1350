-- MLflow's tracking store lives beside the records database, in a database of its own.
CREATE DATABASE mlflow OWNER care;

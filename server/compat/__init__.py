"""The compat dialects: Piston v2 and Judge0 CE wire formats translated onto native runs."""

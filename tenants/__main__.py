from tenants.cli import main

main()

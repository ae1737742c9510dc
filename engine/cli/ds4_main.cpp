// placeholder until the CLI lands (replaced in this session)
int main() { return 0; }

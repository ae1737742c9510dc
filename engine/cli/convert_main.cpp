// placeholder until ds4-convert lands (replaced in this session)
int main() { return 0; }

/*
 * simavr host for the uafp-led firmware tests: a virtual ATmega328P at 16 MHz running the
 * real firmware ELF, with its UART on a pseudo-terminal that pyserial opens like a USB port.
 *
 *   simavr_host FIRMWARE.elf --link PATH [--speed X] [--leds N] [--driver ws2812|apa102]
 *
 * --link PATH  symlink to the pty slave (the "port" the driver opens); it moves on replug.
 * --speed X    run at most X times real time (0 = as fast as possible). Default 1.
 *
 * stdout (line events):  PTY <path> | FRAME <count> <end cycle> <hex RGB per LED, strip order>
 *                        PIN <port><bit> <0|1> <cycle> (trigger output D5) | OK <cmd> | ERR <why>
 *                        CYCLE <n> <dropped_tx_bytes>
 * stdin (commands):      frame | trig (10 us pulse on D2) | cycle | unplug <ms> | quit
 *
 * The LED side effects are decoded from the pins: WS2812B from the PD6 pulse widths
 * (high >= 9 cycles is a 1, low > 50 us latches), APA102 from the SPI data register.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "avr_ioport.h"
#include "avr_spi.h"
#include "avr_uart.h"
#include "sim_avr.h"
#include "sim_elf.h"
#include "sim_irq.h"

#define MAX_LEDS 1024
#define F_CPU_HZ 16000000UL
#define LATCH_CYCLES 800 /* 50 us */

static avr_t *avr;
static int pty_master = -1, pty_keepalive = -1;
static char link_path[512];
static double replug_at_s = 0;
static uint8_t rx_pending[65536];
static size_t rx_head, rx_tail;
static int uart_xoff;
static unsigned long dropped_tx;
static int led_count = 256;
static int driver_apa102;

/* LED decoding state */
static uint8_t frame_raw[MAX_LEDS * 4 + 16];
static size_t frame_bits;
static uint8_t latest_rgb[MAX_LEDS * 3];
static unsigned long frame_count;
static avr_cycle_count_t frame_end_cycle;
static avr_cycle_count_t ws_rise, ws_fall;
static int apa_zeros, apa_in_frame;
static size_t apa_bytes;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- pty -------------------------------------------------------------------------- */

static int open_pty(void) {
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK);
    if (master < 0 || grantpt(master) || unlockpt(master)) return -1;
    const char *slave_name = ptsname(master);
    int slave = open(slave_name, O_RDWR | O_NOCTTY | O_NONBLOCK);
    if (slave < 0) return -1;
    struct termios tio;
    tcgetattr(slave, &tio);
    cfmakeraw(&tio);
    cfsetispeed(&tio, B115200);
    cfsetospeed(&tio, B115200);
    tcsetattr(slave, TCSANOW, &tio);
    pty_master = master;
    pty_keepalive = slave; /* keeps the master readable while no client has the port open */
    if (link_path[0]) {
        char tmp[600];
        snprintf(tmp, sizeof tmp, "%s.tmp%d", link_path, (int)getpid());
        unlink(tmp);
        if (symlink(slave_name, tmp) || rename(tmp, link_path)) return -1;
    }
    printf("PTY %s\n", slave_name);
    return 0;
}

static void close_pty(void) {
    if (link_path[0]) unlink(link_path);
    if (pty_keepalive >= 0) close(pty_keepalive);
    if (pty_master >= 0) close(pty_master);
    pty_master = pty_keepalive = -1;
    rx_head = rx_tail = 0;
}

/* ---- UART ------------------------------------------------------------------------- */

static void on_uart_out(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq;
    (void)param;
    uint8_t byte = (uint8_t)value;
    if (pty_master < 0 || write(pty_master, &byte, 1) != 1) ++dropped_tx;
}

static void on_xon(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq, (void)value, (void)param;
    uart_xoff = 0;
}

static void on_xoff(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq, (void)value, (void)param;
    uart_xoff = 1;
}

static void feed_uart(void) {
    avr_irq_t *in = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
    while (!uart_xoff && rx_tail != rx_head) {
        avr_raise_irq(in, rx_pending[rx_tail]);
        rx_tail = (rx_tail + 1) % sizeof rx_pending;
    }
}

/* ---- LED decoding ------------------------------------------------------------------- */

static void publish_frame(const uint8_t *rgb, int leds) {
    memset(latest_rgb, 0, sizeof latest_rgb);
    memcpy(latest_rgb, rgb, (size_t)leds * 3);
    frame_end_cycle = driver_apa102 ? avr->cycle : ws_fall;
    ++frame_count;
}

static void ws_flush(void) {
    if (frame_bits == 0) return;
    uint8_t rgb[MAX_LEDS * 3];
    int leds = (int)(frame_bits / 24);
    if (leds > MAX_LEDS) leds = MAX_LEDS;
    for (int i = 0; i < leds; ++i) {
        rgb[3 * i + 0] = frame_raw[3 * i + 1]; /* GRB on the wire */
        rgb[3 * i + 1] = frame_raw[3 * i + 0];
        rgb[3 * i + 2] = frame_raw[3 * i + 2];
    }
    publish_frame(rgb, leds);
    frame_bits = 0;
    memset(frame_raw, 0, sizeof frame_raw);
}

static void on_ws_pin(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq, (void)param;
    if (value) {
        if (frame_bits && avr->cycle - ws_fall > LATCH_CYCLES) ws_flush();
        ws_rise = avr->cycle;
    } else {
        ws_fall = avr->cycle;
        int bit = (avr->cycle - ws_rise) >= 9;
        if (frame_bits < sizeof frame_raw * 8) {
            if (bit) frame_raw[frame_bits / 8] |= (uint8_t)(0x80 >> (frame_bits % 8));
            ++frame_bits;
        }
    }
}

static void on_spi_out(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq, (void)param;
    uint8_t byte = (uint8_t)value;
    if (!apa_in_frame) {
        apa_zeros = byte == 0 ? apa_zeros + 1 : 0;
        if (apa_zeros >= 4) {
            apa_in_frame = 1;
            apa_bytes = 0;
        }
        return;
    }
    if (apa_bytes == 0 && byte == 0) return; /* extra start-frame zeros */
    frame_raw[apa_bytes++] = byte;
    if (apa_bytes == (size_t)led_count * 4) {
        uint8_t rgb[MAX_LEDS * 3];
        for (int i = 0; i < led_count; ++i) {
            rgb[3 * i + 0] = frame_raw[4 * i + 3];
            rgb[3 * i + 1] = frame_raw[4 * i + 2];
            rgb[3 * i + 2] = frame_raw[4 * i + 1];
        }
        publish_frame(rgb, led_count);
        apa_in_frame = 0;
        apa_zeros = 0;
    }
}

static void on_trigger_out(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq, (void)param;
    printf("PIN D5 %u %llu\n", value ? 1u : 0u, (unsigned long long)avr->cycle);
}

static avr_cycle_count_t end_trigger_in(struct avr_t *a, avr_cycle_count_t when, void *param) {
    (void)when, (void)param;
    avr_raise_irq(avr_io_getirq(a, AVR_IOCTL_IOPORT_GETIRQ('D'), 2), 0);
    return 0;
}

/* ---- stdin commands ---------------------------------------------------------------- */

static void handle_command(char *cmd) {
    if (strcmp(cmd, "frame") == 0) {
        if (!driver_apa102 && frame_bits && avr->cycle - ws_fall > LATCH_CYCLES) ws_flush();
        printf("FRAME %lu %llu ", frame_count, (unsigned long long)frame_end_cycle);
        for (int i = 0; i < led_count * 3; ++i) printf("%02x", latest_rgb[i]);
        printf("\n");
    } else if (strcmp(cmd, "trig") == 0) {
        avr_raise_irq(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('D'), 2), 1);
        avr_cycle_timer_register(avr, 160, end_trigger_in, NULL);
        printf("OK trig\n");
    } else if (strcmp(cmd, "cycle") == 0) {
        printf("CYCLE %llu %lu\n", (unsigned long long)avr->cycle, dropped_tx);
    } else if (strncmp(cmd, "unplug", 6) == 0) {
        int ms = atoi(cmd + 6);
        close_pty();
        replug_at_s = now_s() + ms / 1000.0;
        printf("OK unplug\n");
    } else if (strcmp(cmd, "quit") == 0) {
        close_pty();
        exit(0);
    } else {
        printf("ERR unknown command %s\n", cmd);
    }
}

static char stdin_line[256];
static size_t stdin_len;

static void read_stdin(void) {
    char buf[256];
    ssize_t n = read(0, buf, sizeof buf);
    if (n == 0) { /* parent went away */
        close_pty();
        exit(0);
    }
    for (ssize_t i = 0; i < n; ++i) {
        if (buf[i] == '\n') {
            stdin_line[stdin_len] = 0;
            handle_command(stdin_line);
            stdin_len = 0;
        } else if (stdin_len < sizeof stdin_line - 1) {
            stdin_line[stdin_len++] = buf[i];
        }
    }
}

static void read_pty(void) {
    uint8_t buf[4096];
    ssize_t n = read(pty_master, buf, sizeof buf);
    for (ssize_t i = 0; i < n; ++i) {
        size_t next = (rx_head + 1) % sizeof rx_pending;
        if (next == rx_tail) break; /* host-side buffer full: drop like a USB bridge would */
        rx_pending[rx_head] = buf[i];
        rx_head = next;
    }
}

static void on_signal(int sig) {
    (void)sig;
    close_pty();
    _exit(0);
}

int main(int argc, char **argv) {
    const char *elf_path = NULL;
    double speed = 1.0;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--link") && i + 1 < argc) {
            snprintf(link_path, sizeof link_path, "%s", argv[++i]);
        } else if (!strcmp(argv[i], "--speed") && i + 1 < argc) {
            speed = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--leds") && i + 1 < argc) {
            led_count = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--driver") && i + 1 < argc) {
            driver_apa102 = !strcmp(argv[++i], "apa102");
        } else {
            elf_path = argv[i];
        }
    }
    if (!elf_path || led_count < 1 || led_count > MAX_LEDS) {
        fprintf(stderr, "usage: %s FIRMWARE.elf --link PATH [--speed X] [--leds N] [--driver ws2812|apa102]\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    elf_firmware_t firmware;
    memset(&firmware, 0, sizeof firmware);
    if (elf_read_firmware(elf_path, &firmware)) {
        fprintf(stderr, "cannot read firmware %s\n", elf_path);
        return 1;
    }
    strcpy(firmware.mmcu, "atmega328p");
    firmware.frequency = F_CPU_HZ;
    avr = avr_make_mcu_by_name(firmware.mmcu);
    if (!avr) return 1;
    avr_init(avr);
    avr_load_firmware(avr, &firmware);
    avr->log = 1;

    uint32_t flags = 0;
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~(uint32_t)(AVR_UART_FLAG_STDIO | AVR_UART_FLAG_POLL_SLEEP);
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT), on_uart_out, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON), on_xon, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF), on_xoff, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('D'), 5), on_trigger_out, NULL);
    if (driver_apa102) {
        avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_SPI_GETIRQ(0), SPI_IRQ_OUTPUT), on_spi_out, NULL);
    } else {
        avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('D'), 6), on_ws_pin, NULL);
    }
    if (open_pty()) {
        fprintf(stderr, "cannot create pty/link %s: %s\n", link_path, strerror(errno));
        return 1;
    }
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);

    double start_s = now_s();
    avr_cycle_count_t start_cycle = avr->cycle;
    for (;;) {
        for (int i = 0; i < 4000; ++i) {
            int state = avr_run(avr);
            if (state == cpu_Done || state == cpu_Crashed) {
                printf("ERR cpu stopped (state %d) at pc 0x%x\n", state, avr->pc);
                fprintf(stderr, "firmware stopped: state %d pc 0x%x\n", state, avr->pc);
                close_pty();
                return 3;
            }
        }
        int timeout_ms = 0;
        if (speed > 0) {
            double ahead_s = (double)(avr->cycle - start_cycle) / (F_CPU_HZ * speed) - (now_s() - start_s);
            if (ahead_s > 0.001) timeout_ms = (int)(ahead_s * 1000);
        }
        if (pty_master < 0 && replug_at_s > 0 && now_s() >= replug_at_s) {
            replug_at_s = 0;
            if (open_pty()) printf("ERR replug failed: %s\n", strerror(errno));
        }
        struct pollfd fds[2] = {{0, POLLIN, 0}, {pty_master, POLLIN, 0}};
        int nfds = pty_master >= 0 ? 2 : 1;
        if (poll(fds, (nfds_t)nfds, timeout_ms) > 0) {
            if (fds[0].revents & (POLLIN | POLLHUP)) read_stdin();
            if (nfds == 2 && (fds[1].revents & POLLIN)) read_pty();
        }
        feed_uart();
    }
}
